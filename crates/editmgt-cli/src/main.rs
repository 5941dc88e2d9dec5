fn main() {
    eprintln!("editmgt: not implemented yet");
    std::process::exit(1);
}
