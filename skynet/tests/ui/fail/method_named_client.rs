use skynet::ServiceError;

pub struct Widgets;

#[skynet::service]
impl Widgets {
    async fn client(&self, id: u64) -> Result<u64, ServiceError> {
        Ok(id)
    }

    async fn at(&self, id: u64) -> Result<u64, ServiceError> {
        Ok(id)
    }
}

fn main() {}
