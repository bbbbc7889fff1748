fn main() {
    println!("diskimg");
}
