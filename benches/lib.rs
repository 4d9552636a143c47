//! Nothing to link: the benchmarks live in `benches/` (criterion) and in the
//! Python scripts beside this file.
