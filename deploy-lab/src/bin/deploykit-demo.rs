//! The demo service as a program: `deploykit-demo --port PORT (--artifact DIR | --version V)
//! [--fail-share S]` (see [`deploy_lab::demo::run_program`]).

fn main() -> std::process::ExitCode {
    deploy_lab::demo::run_program(std::env::args().skip(1))
}
