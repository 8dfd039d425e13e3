#[skynet::service]
pub struct Widgets;

fn main() {}
