//! A small fuzzer for Outpost's parsers, on the stable toolchain and
//! without instrumentation.
//!
//! What it does: a target is a function over bytes that panics when an
//! invariant breaks and otherwise returns a small *outcome* number (which
//! error, which branch). [`run`] always replays the target's seeds and its
//! saved corpus (`fuzz/corpus/<target>/`), so every test run is a
//! regression run. With `OUTPOST_FUZZ_SECONDS` set it then mutates inputs
//! for that long (bit flips, byte edits, splices, dictionary tokens); an
//! input with an outcome not seen before joins the pool and is saved to the
//! corpus, an input that panics is saved as `crash-*` and fails the run.
//!
//! What it does not do: measure code coverage. Outcomes stand in for it,
//! so it finds what a target's outcomes can tell apart; a target should
//! return fine-grained outcomes.

use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One fuzz target.
pub struct Target<'a> {
    /// Its name: the corpus lives in `fuzz/corpus/<name>/`.
    pub name: &'a str,
    /// Inputs to start from.
    pub seeds: &'a [&'a [u8]],
    /// Tokens the mutator inserts whole (keywords, delimiters).
    pub dictionary: &'a [&'a [u8]],
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Inputs tried, corpus and seeds included.
    pub inputs: u64,
    /// Distinct outcomes seen.
    pub outcomes: usize,
    /// Inputs saved to the corpus in this run.
    pub saved: usize,
}

/// The workspace's corpus directory for `name`.
pub fn corpus_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(name)
}

/// Replays the seeds and the corpus through `check`, then, with
/// `OUTPOST_FUZZ_SECONDS` set (and `OUTPOST_FUZZ_TARGET` unset or naming
/// this target), fuzzes for that long. Panics if any input panicked, naming
/// the saved file.
pub fn run(target: &Target<'_>, check: impl Fn(&[u8]) -> u64) -> Report {
    let dir = corpus_dir(target.name);
    let mut pool: Vec<Vec<u8>> = target.seeds.iter().map(|s| s.to_vec()).collect();
    pool.extend(read_corpus(&dir));
    let mut outcomes = HashSet::new();
    let mut inputs = 0;
    for input in &pool {
        inputs += 1;
        match try_check(&check, input) {
            Ok(outcome) => {
                outcomes.insert(outcome);
            }
            Err(message) => panic!("fuzz target {}: a corpus input panics ({message}): {input:?}", target.name),
        }
    }
    let seconds = std::env::var("OUTPOST_FUZZ_SECONDS").ok().and_then(|s| s.parse::<u64>().ok());
    let chosen = std::env::var("OUTPOST_FUZZ_TARGET").map_or(true, |only| only == target.name);
    let mut saved = 0;
    if let (Some(seconds), true) = (seconds, chosen) {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let mut rng = Rng::new(seed_from_clock());
        let mut crashes: Vec<String> = Vec::new();
        // Panics are expected here and reported below, not printed each.
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        while Instant::now() < deadline {
            for _ in 0..64 {
                let mut input = pool[rng.below(pool.len())].clone();
                let other = pool[rng.below(pool.len())].clone();
                for _ in 0..1 + rng.below(8) {
                    mutate(&mut input, &other, target.dictionary, &mut rng);
                }
                inputs += 1;
                match try_check(&check, &input) {
                    Ok(outcome) => {
                        if outcomes.insert(outcome) {
                            if saved < MAX_SAVED_PER_RUN {
                                saved += usize::from(save(&dir, "find", &input));
                            }
                            pool.push(input);
                        }
                    }
                    Err(message) => {
                        if crashes.len() < MAX_SAVED_PER_RUN {
                            save(&dir, "crash", &input);
                        }
                        crashes.push(message);
                    }
                }
            }
        }
        std::panic::set_hook(hook);
        eprintln!(
            "fuzz {}: {inputs} inputs, {} outcomes, {saved} saved, {} crashes",
            target.name,
            outcomes.len(),
            crashes.len()
        );
        assert!(
            crashes.is_empty(),
            "fuzz target {} panicked {} times, first: {:?} (inputs saved in {})",
            target.name,
            crashes.len(),
            &crashes[..crashes.len().min(3)],
            dir.display()
        );
    }
    Report { inputs, outcomes: outcomes.len(), saved }
}

fn try_check(check: &impl Fn(&[u8]) -> u64, input: &[u8]) -> Result<u64, String> {
    catch_unwind(AssertUnwindSafe(|| check(input))).map_err(|panic| {
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic".into())
    })
}

fn read_corpus(dir: &Path) -> Vec<Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries.map_while(Result::ok).map(|e| e.path()).collect();
    files.sort();
    files.iter().filter_map(|path| std::fs::read(path).ok()).collect()
}

/// Saves an input under a name from its contents; whether it was new.
fn save(dir: &Path, kind: &str, input: &[u8]) -> bool {
    let path = dir.join(format!("{kind}-{:016x}", fnv1a(input)));
    if path.exists() {
        return false;
    }
    std::fs::create_dir_all(dir).is_ok() && std::fs::write(path, input).is_ok()
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

fn seed_from_clock() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
    nanos | 1
}

/// xorshift64*: reproducible and dependency-free.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// One mutation of `input`, sometimes borrowing from `other` or the dictionary.
fn mutate(input: &mut Vec<u8>, other: &[u8], dictionary: &[&[u8]], rng: &mut Rng) {
    let at = |rng: &mut Rng, len: usize| rng.below(len + 1);
    match rng.below(9) {
        0 if !input.is_empty() => {
            let i = rng.below(input.len());
            input[i] ^= 1 << rng.below(8);
        }
        1 if !input.is_empty() => {
            let i = rng.below(input.len());
            input[i] = rng.next() as u8;
        }
        2 if !input.is_empty() => {
            let i = rng.below(input.len());
            let n = 1 + rng.below(input.len() - i);
            input.drain(i..i + n.min(16));
        }
        3 => {
            let i = at(rng, input.len());
            input.insert(i, INTERESTING[rng.below(INTERESTING.len())]);
        }
        4 if !dictionary.is_empty() => {
            let token = dictionary[rng.below(dictionary.len())];
            let i = at(rng, input.len());
            input.splice(i..i, token.iter().copied());
        }
        5 if !other.is_empty() => {
            let start = rng.below(other.len());
            let end = start + rng.below(other.len() - start + 1);
            let i = at(rng, input.len());
            input.splice(i..i, other[start..end].iter().copied());
        }
        6 if !input.is_empty() => {
            let i = rng.below(input.len());
            let n = 1 + rng.below((input.len() - i).min(32));
            let copy: Vec<u8> = input[i..i + n].to_vec();
            let j = at(rng, input.len());
            input.splice(j..j, copy);
        }
        7 if input.len() > 1 => {
            let cut = rng.below(input.len());
            input.truncate(cut);
        }
        _ => {
            let i = at(rng, input.len());
            let digits = format!("{}", rng.next() >> rng.below(64));
            input.splice(i..i, digits.bytes());
        }
    }
    input.truncate(64 * 1024);
}

/// New inputs saved to the corpus in one run at most, so that a target
/// with many outcomes does not flood the repository.
const MAX_SAVED_PER_RUN: usize = 100;

const INTERESTING: &[u8] = b"\0\r\n\t %/.:@#?[]{}\"'\\=-_0119azAZ\x7f\x80\xff";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_corpus_is_replayed_and_crashes_fail_the_run() {
        let target = Target { name: "self-test", seeds: &[b"abc", b""], dictionary: &[] };
        let report = run(&target, |input| input.len() as u64);
        assert_eq!(report.inputs, 2);
        assert_eq!(report.outcomes, 2);
        let crashing =
            std::panic::catch_unwind(|| run(&target, |input| if input.is_empty() { panic!("empty") } else { 0 }));
        assert!(crashing.is_err());
    }

    #[test]
    fn mutations_stay_bounded_and_change_inputs() {
        let mut rng = Rng::new(7);
        let mut input = b"GET / HTTP/1.1\r\n".to_vec();
        let original = input.clone();
        let mut changed = false;
        for _ in 0..1000 {
            mutate(&mut input, b"Host: a\r\n", &[b"chunked"], &mut rng);
            changed |= input != original;
            assert!(input.len() <= 64 * 1024);
        }
        assert!(changed);
    }
}
