// Every problem is reported in one build, and the function stays defined for the code around it.
use skynet::ServiceError;

#[skynet::service(version = "one", colour = "blue", name = "")]
fn ping<T>(a: u64, b: u64) -> Option<u64> {
    Some(a + b)
}

fn main() {
    let _ = ping::<u8>(1, 2);
    let _ = ServiceError::new("unused");
}
