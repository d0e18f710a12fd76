fn main() {
    println!("tokenledger");
}
