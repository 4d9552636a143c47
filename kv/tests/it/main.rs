//! Integration tests of the store with real redb files in temp dirs.

mod api;
mod crash;
mod objects;
mod queues;
