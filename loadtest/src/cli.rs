#[derive(clap::Args, Debug)]
pub struct LoadArgs {}
pub fn run(_args: LoadArgs) -> std::process::ExitCode { std::process::ExitCode::FAILURE }
