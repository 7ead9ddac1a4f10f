fn main() {
    std::process::exit(cmh::cli::main());
}
