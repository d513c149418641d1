//! `sqlx::migrate!` embeds `migrations/` at compile time, but cargo does not know that: without
//! this, a new migration file alone leaves the binary with the old set.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
