//! `qforge-sim-adb`: adb's command line in front of the simulated phone
//! (`qforge_agent::mobile::sim`), for tests and demos without a device. The phone's state is a
//! JSON file named by `QFORGE_SIM_STATE`, read and written back (atomically) on every call, so
//! a sequence of adb invocations sees one phone. `-s SERIAL` is accepted and ignored.

use qforge_agent::mobile::sim::{SimPhone, apply_adb};

fn main() {
    let Some(state) = std::env::var_os("QFORGE_SIM_STATE") else {
        eprintln!("qforge-sim-adb: set QFORGE_SIM_STATE to the simulated phone's JSON file");
        std::process::exit(2);
    };
    let state = std::path::PathBuf::from(state);
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().is_some_and(|a| a == "-s") {
        argv.drain(..2.min(argv.len()));
    }
    let mut phone: SimPhone = match std::fs::read_to_string(&state)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
    {
        Ok(p) => p,
        Err(e) => {
            eprintln!("qforge-sim-adb: {}: {e}", state.display());
            std::process::exit(2);
        }
    };
    match apply_adb(&mut phone, &argv) {
        Ok(out) => {
            print!("{out}");
            let tmp = state.with_extension("json.tmp");
            let json = serde_json::to_string(&phone).expect("serialisable");
            if let Err(e) = std::fs::write(&tmp, json).and_then(|_| std::fs::rename(&tmp, &state)) {
                eprintln!("qforge-sim-adb: {}: {e}", state.display());
                std::process::exit(2);
            }
        }
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(1);
        }
    }
}
