//! The `cmh` binary: the command line ([`cli`]) over the `cmh` library.

mod cli;

fn main() {
    std::process::exit(cli::main());
}
