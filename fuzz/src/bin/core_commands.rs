//! AFL++ harness for the `core_commands` target (see crates/lqsm-fuzz): `cargo afl fuzz`
//! runs it in persistent mode, many inputs per process.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        lqsm_fuzz::Target::CoreCommands.run(data);
    });
}
