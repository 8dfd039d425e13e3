use skynet::ServiceError;

pub struct Generic<T>(T);

#[skynet::service]
impl<T: Send + Sync + 'static> Generic<T> {
    async fn get(&self, id: u64) -> Result<u64, ServiceError> {
        Ok(id)
    }
}

#[derive(Default)]
pub struct Traited;

pub trait Get {
    fn get(&self) -> u64;
}

#[skynet::service]
impl Get for Traited {
    fn get(&self) -> u64 {
        1
    }
}

pub struct Empty;

#[skynet::service]
impl Empty {
    pub fn new() -> Self {
        Empty
    }

    #[idempotent(always)]
    pub async fn get(&self, id: u64) -> Result<u64, ServiceError> {
        Ok(id)
    }
}

fn main() {}
