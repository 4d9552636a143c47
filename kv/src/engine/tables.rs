//! The redb tables (their layout is in `kv/DESIGN.md`) and how a commit's
//! writes change them: one transaction per [`apply`].

use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::encoding::{alarm_time_key, decode_record, encode_record, expiry_key};
use super::writes::Write;
use crate::namespaces::live;

/// KV records, by composite key (`[namespace length][namespace][key]`).
pub(crate) const ENTRIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("entries");
/// `[expiration: u64 BE][composite key]`: KV records in expiration order,
/// for the sweeper.
pub(crate) const EXPIRY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("expiry");
/// Durable Object storage, by `[class length][class][object id][key]`.
pub(crate) const OBJECTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("objects");
/// Each object's alarm (milliseconds since the epoch), by object prefix.
pub(crate) const ALARMS: TableDefinition<&[u8], u64> = TableDefinition::new("alarms");
/// The same alarms ordered by time: `[at_ms: u64 BE][object prefix]`, so the
/// scheduler finds due alarms without scanning every object's.
pub(crate) const ALARM_TIMES: TableDefinition<&[u8], ()> = TableDefinition::new("alarm_times");
/// `wal_sequence`: the last log record applied to the tables. After a crash
/// redb opens at its last durable commit, and the value there says which
/// records of the log to apply again.
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(crate) const WAL_SEQUENCE: &str = "wal_sequence";

/// Creates the tables a new file lacks and returns the last log sequence
/// the tables hold.
pub(crate) fn prepare(db: &Database) -> Result<u64, redb::Error> {
    let txn = db.begin_write()?;
    txn.open_table(ENTRIES)?;
    txn.open_table(EXPIRY)?;
    txn.open_table(OBJECTS)?;
    txn.open_table(ALARMS)?;
    txn.open_table(ALARM_TIMES)?;
    index_alarms(&txn)?;
    let applied = txn.open_table(META)?.get(WAL_SEQUENCE)?.map_or(0, |v| v.value());
    txn.commit()?;
    Ok(applied)
}

/// Builds the time index of a file written before it existed.
fn index_alarms(txn: &redb::WriteTransaction) -> Result<(), redb::Error> {
    let alarms = txn.open_table(ALARMS)?;
    let mut times = txn.open_table(ALARM_TIMES)?;
    if !times.is_empty()? || alarms.is_empty()? {
        return Ok(());
    }
    for entry in alarms.iter()? {
        let (object, at) = entry?;
        times.insert(alarm_time_key(at.value(), object.value()).as_slice(), ())?;
    }
    Ok(())
}

/// The tables of one write transaction, opened on first use: a commit of
/// one KV put opens two, not all of them.
struct Tables<'t> {
    txn: &'t redb::WriteTransaction,
    entries: Option<redb::Table<'t, &'static [u8], &'static [u8]>>,
    expiry: Option<redb::Table<'t, &'static [u8], &'static [u8]>>,
    objects: Option<redb::Table<'t, &'static [u8], &'static [u8]>>,
    alarms: Option<redb::Table<'t, &'static [u8], u64>>,
    alarm_times: Option<redb::Table<'t, &'static [u8], ()>>,
}

impl<'t> Tables<'t> {
    fn new(txn: &'t redb::WriteTransaction) -> Self {
        Tables { txn, entries: None, expiry: None, objects: None, alarms: None, alarm_times: None }
    }

    #[allow(clippy::type_complexity)]
    fn kv(
        &mut self,
    ) -> Result<
        (&mut redb::Table<'t, &'static [u8], &'static [u8]>, &mut redb::Table<'t, &'static [u8], &'static [u8]>),
        redb::Error,
    > {
        if self.entries.is_none() {
            self.entries = Some(self.txn.open_table(ENTRIES)?);
            self.expiry = Some(self.txn.open_table(EXPIRY)?);
        }
        Ok((self.entries.as_mut().expect("opened"), self.expiry.as_mut().expect("opened")))
    }

    fn objects(&mut self) -> Result<&mut redb::Table<'t, &'static [u8], &'static [u8]>, redb::Error> {
        if self.objects.is_none() {
            self.objects = Some(self.txn.open_table(OBJECTS)?);
        }
        Ok(self.objects.as_mut().expect("opened"))
    }

    #[allow(clippy::type_complexity)]
    fn alarms(
        &mut self,
    ) -> Result<(&mut redb::Table<'t, &'static [u8], u64>, &mut redb::Table<'t, &'static [u8], ()>), redb::Error> {
        if self.alarms.is_none() {
            self.alarms = Some(self.txn.open_table(ALARMS)?);
            self.alarm_times = Some(self.txn.open_table(ALARM_TIMES)?);
        }
        Ok((self.alarms.as_mut().expect("opened"), self.alarm_times.as_mut().expect("opened")))
    }
}

impl Tables<'_> {
    /// Sets (or with `None` clears) an object's alarm, in both tables; with
    /// `expected`, only if the alarm is still set to that time.
    fn replace_alarm(&mut self, object: &[u8], expected: Option<u64>, new: Option<u64>) -> Result<(), redb::Error> {
        let (alarms, alarm_times) = self.alarms()?;
        let current = alarms.get(object)?.map(|at| at.value());
        if expected.is_some() && current != expected {
            return Ok(());
        }
        if let Some(old) = current {
            alarms.remove(object)?;
            alarm_times.remove(alarm_time_key(old, object).as_slice())?;
        }
        if let Some(at) = new {
            alarms.insert(object, at)?;
            alarm_times.insert(alarm_time_key(at, object).as_slice(), ())?;
        }
        Ok(())
    }
}

/// Applies `writes` in one redb transaction. A durable one also records
/// `sequence` as the last log record the tables hold (after a crash, redb
/// opens at its last durable commit, so only those need it).
pub(crate) fn apply<'a>(
    db: &Database,
    writes: impl Iterator<Item = &'a Write>,
    durability: Durability,
    sequence: u64,
) -> Result<(), redb::Error> {
    let durable = matches!(durability, Durability::Immediate);
    let mut txn = db.begin_write()?;
    txn.set_durability(durability).map_err(|err| redb::Error::Corrupted(err.to_string()))?;
    {
        let mut tables = Tables::new(&txn);
        for write in writes {
            match write {
                Write::Put { key, record } => {
                    let (entries, expiry) = tables.kv()?;
                    remove_expiry(entries, expiry, key)?;
                    entries.insert(key.as_slice(), encode_record(record).as_slice())?;
                    if let Some(expiration) = record.expiration {
                        expiry.insert(expiry_key(expiration, key).as_slice(), [].as_slice())?;
                    }
                }
                Write::Delete { key } => {
                    let (entries, expiry) = tables.kv()?;
                    remove_expiry(entries, expiry, key)?;
                    entries.remove(key.as_slice())?;
                }
                Write::DeleteExpired { key, now } => {
                    let (entries, expiry) = tables.kv()?;
                    let expired = entries
                        .get(key.as_slice())?
                        .and_then(|stored| decode_record(stored.value()))
                        .is_some_and(|record| !live(&record, *now));
                    if expired {
                        remove_expiry(entries, expiry, key)?;
                        entries.remove(key.as_slice())?;
                    }
                }
                Write::ObjectPut { key, value } => {
                    tables.objects()?.insert(key.as_slice(), value.as_ref())?;
                }
                Write::ObjectDelete { key } => {
                    tables.objects()?.remove(key.as_slice())?;
                }
                Write::Alarm { object, at_ms } => tables.replace_alarm(object, None, *at_ms)?,
                Write::AlarmReplaceIf { object, expected_ms, new_ms } => {
                    tables.replace_alarm(object, Some(*expected_ms), *new_ms)?
                }
            }
        }
        drop(tables);
        if durable {
            txn.open_table(META)?.insert(WAL_SEQUENCE, sequence)?;
        }
    }
    txn.commit()?;
    Ok(())
}

/// The old record's expiry entry goes with it.
fn remove_expiry(
    entries: &redb::Table<&[u8], &[u8]>,
    expiry: &mut redb::Table<&[u8], &[u8]>,
    key: &[u8],
) -> Result<(), redb::Error> {
    let old_expiration = entries.get(key)?.and_then(|old| decode_record(old.value())).and_then(|r| r.expiration);
    if let Some(old) = old_expiration {
        expiry.remove(expiry_key(old, key).as_slice())?;
    }
    Ok(())
}
