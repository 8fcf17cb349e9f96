fn main() {
    println!("{}", ctsync::bpf::EBPF_OBJECT.len());
}
