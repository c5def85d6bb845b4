//! `weft`: the operator's command line. Everything is in the library
//! (`admin_cli`); see its docs for the commands and exit codes.

fn main() {
    std::process::exit(admin_cli::run(std::env::args_os()));
}
