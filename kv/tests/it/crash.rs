//! Crash consistency: a write storm in a child process is killed with
//! SIGKILL at a random moment, again and again. After each kill, every
//! write the child saw acknowledged is present and the file opens cleanly.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use outpost_kv::{Store, StoreConfig};

const KILLS: usize = 25;

#[test]
fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("storm.redb");
    let mut acknowledged: Vec<u64> = Vec::new();
    let mut next_key = 0u64;
    let mut replayed = 0;
    // A cheap pseudo-random kill time from the clock, different every round.
    let mut seed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos() as u64 | 1;
    for round in 0..KILLS {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let run_for = Duration::from_millis(20 + seed % 300);
        let mut child = Command::new(env!("CARGO_BIN_EXE_kv-write-storm"))
            .arg(&path)
            .arg(next_key.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter_map(|line| line.parse::<u64>().ok())
                .collect::<Vec<u64>>()
        });
        let started = Instant::now();
        while started.elapsed() < run_for {
            std::thread::sleep(Duration::from_millis(2));
        }
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        child.wait().unwrap();
        let seen = reader.join().unwrap();
        next_key = next_key.max(seen.iter().max().map_or(0, |m| m + 1)) + 1000;
        acknowledged.extend(seen);

        let store = Store::open(&path, StoreConfig::default()).unwrap_or_else(|err| panic!("round {round}: {err}"));
        replayed += store.replayed_on_open();
        for n in &acknowledged {
            let record = store
                .get("storm", format!("key-{n:012}").as_bytes())
                .unwrap()
                .unwrap_or_else(|| panic!("round {round}: acknowledged key {n} is missing"));
            assert_eq!(record.value, format!("value of {n} ").repeat(1 + (n % 50) as usize).as_bytes(), "key {n}");
        }
    }
    assert!(acknowledged.len() > KILLS, "the storm wrote too little to mean anything: {}", acknowledged.len());
    // Most kills land between checkpoints: recovery went through the log.
    assert!(replayed > 0, "no kill needed the log; the test did not test it");
    println!(
        "survived {KILLS} SIGKILLs; {} acknowledged writes all present; {replayed} log records replayed",
        acknowledged.len()
    );
}
