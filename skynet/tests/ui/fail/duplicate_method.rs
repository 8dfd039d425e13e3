use skynet::ServiceError;

pub struct Widgets;

#[skynet::service]
impl Widgets {
    async fn get(&self, id: u64) -> Result<u64, ServiceError> {
        Ok(id)
    }

    async fn get(&self, name: String) -> Result<String, ServiceError> {
        Ok(name)
    }
}

fn main() {}
