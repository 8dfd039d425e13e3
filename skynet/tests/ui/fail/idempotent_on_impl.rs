use skynet::ServiceError;

pub struct Widgets;

#[skynet::service(idempotent)]
impl Widgets {
    async fn get(&self, id: u64) -> Result<u64, ServiceError> {
        Ok(id)
    }

    #[idempotent]
    fn helper(&self) {}
}

fn main() {}
