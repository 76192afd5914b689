//! Durable state in one redb file, `{data-dir}/state.redb`.
//!
//! Owns the tables and the typed records in them; knows nothing about the install flow.
//! Every write commits with immediate durability before the caller publishes an event, so an
//! event never announces a state a crash could take back.
//!
//! The instances and interfaces tables, which every API query reads, are also kept decoded
//! in memory ([`Mirror`]): reading them opens no transaction and parses no JSON.

mod records;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use crate::util::{Locked, RwLocked};

use redb::{Database, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub(crate) use records::{
    Artifact, DeviceRoute, DownloadState, Fetched, IfStatus, Instance, InterfaceRecord,
    OnServiceDown, PackageRecord, Previous, Servers, Status, Step, UpdateFound,
};

const INSTANCES: TableDefinition<&str, &[u8]> = TableDefinition::new("instances");
const DOWNLOADS: TableDefinition<&str, &[u8]> = TableDefinition::new("downloads");
const ARTIFACTS: TableDefinition<&str, &[u8]> = TableDefinition::new("artifacts");
/// instance id -> InterfaceRecord
const INTERFACES: TableDefinition<&str, &[u8]> = TableDefinition::new("interfaces");
/// "{router}/{vlan:04}" -> instance id
const VLANS: TableDefinition<&str, &str> = TableDefinition::new("vlans");
/// uid -> instance id (service users)
const UIDS: TableDefinition<u32, &str> = TableDefinition::new("uids");
/// device (canonical spelling) -> DeviceRoute
const ROUTES: TableDefinition<&str, &[u8]> = TableDefinition::new("device_routes");
/// Trust state: `tofu/{feature}/{version}/{arch}` → first verified sha256, `catalogue/serial`.
const TRUST: TableDefinition<&str, &[u8]> = TableDefinition::new("trust");
/// feature id -> UpdateFound (what update checks found, kept across restarts)
const UPDATES: TableDefinition<&str, &[u8]> = TableDefinition::new("updates");

/// redb's page cache.
const CACHE_BYTES: usize = 256 * 1024;

#[derive(Debug)]
pub(crate) enum StoreError {
    /// The database could not be opened, read or written.
    Db(String),
    /// A record did not decode: the file was written by an incompatible agent or damaged.
    Corrupt {
        table: String,
        key: String,
        error: String,
    },
    /// `insert_instance`: another instance of the feature already has this name.
    NameTaken,
    /// `allocate_vlan`: every id of the pool is taken.
    PoolExhausted,
    NotFound,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Db(e) => write!(f, "state database: {e}"),
            StoreError::Corrupt { table, key, error } => {
                write!(
                    f,
                    "state database: record {table}/{key} is unreadable: {error}"
                )
            }
            StoreError::NameTaken => f.write_str("name already taken"),
            StoreError::PoolExhausted => f.write_str("VLAN pool exhausted"),
            StoreError::NotFound => f.write_str("no such record"),
        }
    }
}

impl std::error::Error for StoreError {}

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

#[derive(Clone)]
pub(crate) struct Store {
    db: Arc<Database>,
    instances: Arc<Mirror<Instance>>,
    interfaces: Arc<Mirror<InterfaceRecord>>,
}

/// A decoded copy of one table, kept in step with it. Every write to the table commits first
/// and then changes the copy, both while holding `writer`, so the copy changes in commit
/// order; a reader takes `rows` for as long as a clone takes. A record that did not decode
/// is kept as its error, so readers see the same `Corrupt` they would from the file.
struct Mirror<T> {
    table: TableDefinition<'static, &'static str, &'static [u8]>,
    writer: Mutex<()>,
    rows: RwLock<BTreeMap<String, Result<Arc<T>, String>>>,
}

impl<T: DeserializeOwned + Clone> Mirror<T> {
    fn load(
        db: &Database,
        table: TableDefinition<'static, &'static str, &'static [u8]>,
    ) -> Result<Mirror<T>, StoreError> {
        let tx = db.begin_read().map_err(db_err)?;
        let t = tx.open_table(table).map_err(db_err)?;
        let mut rows = BTreeMap::new();
        for row in t.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            let decoded = serde_json::from_slice::<T>(v.value())
                .map(Arc::new)
                .map_err(|e| e.to_string());
            rows.insert(k.value().to_owned(), decoded);
        }
        Ok(Mirror {
            table,
            writer: Mutex::new(()),
            rows: RwLock::new(rows),
        })
    }

    /// A row as the file would give it: the record, or `Corrupt`.
    fn row(&self, key: &str, row: &Result<Arc<T>, String>) -> Result<Arc<T>, StoreError> {
        row.clone().map_err(|error| StoreError::Corrupt {
            table: redb::TableHandle::name(&self.table).to_owned(),
            key: key.to_owned(),
            error,
        })
    }

    /// One record, shared with the copy (no clone of its contents).
    fn get(&self, key: &str) -> Result<Option<Arc<T>>, StoreError> {
        let rows = self.rows.read_locked();
        rows.get(key).map(|r| self.row(key, r)).transpose()
    }

    /// Every record, shared with the copy.
    fn all(&self) -> Result<Vec<Arc<T>>, StoreError> {
        let rows = self.rows.read_locked();
        rows.iter().map(|(k, r)| self.row(k, r)).collect()
    }

    /// Runs `write` (which commits) and applies what it returns to the copy: `Some` puts the
    /// record under `key`, `None` removes it.
    fn write<R>(
        &self,
        key: &str,
        write: impl FnOnce() -> Result<(R, Option<T>), StoreError>,
    ) -> Result<R, StoreError> {
        let _serial = self.writer.locked();
        let (out, row) = write()?;
        let mut rows = self.rows.write_locked();
        match row {
            Some(v) => rows.insert(key.to_owned(), Ok(Arc::new(v))),
            None => rows.remove(key),
        };
        Ok(out)
    }
}

impl Store {
    pub(crate) fn open(path: &Path) -> Result<Store, StoreError> {
        // Root's alone (it holds every instance's settings, secrets included): made 0600
        // before redb writes to it, and an older 0644 file is corrected.
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(path)
            .and_then(|f| f.set_permissions(std::fs::Permissions::from_mode(0o600)))
            .map_err(|e| StoreError::Db(format!("{}: {e}", path.display())))?;
        // redb's v3 file format: the v2 one writes (and after a crash rebuilds) its allocator
        // state at every open and close, ~60% of the agent's start-up work (callgrind), many
        // seconds on a slow router CPU. Older files are upgraded in place. The page cache is
        // bounded (redb's default is 1 GiB): queries read the tables' decoded copies.
        let mut db = Database::builder()
            .create_with_file_format_v3(true)
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(db_err)?;
        db.upgrade().map_err(db_err)?;
        // Create the tables up front so that readers never meet a missing table.
        let tx = db.begin_write().map_err(db_err)?;
        for table in [
            INSTANCES, DOWNLOADS, ARTIFACTS, INTERFACES, TRUST, ROUTES, UPDATES,
        ] {
            tx.open_table(table).map_err(db_err)?;
        }
        tx.open_table(VLANS).map_err(db_err)?;
        tx.open_table(UIDS).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(Store {
            instances: Arc::new(Mirror::load(&db, INSTANCES)?),
            interfaces: Arc::new(Mirror::load(&db, INTERFACES)?),
            db: Arc::new(db),
        })
    }

    fn get<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(table).map_err(db_err)?;
        match t.get(key).map_err(db_err)? {
            None => Ok(None),
            Some(v) => decode(table, key, v.value()).map(Some),
        }
    }

    fn put<T: Serialize>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(db_err)?;
        let tx = self.db.begin_write().map_err(db_err)?;
        tx.open_table(table)
            .map_err(db_err)?
            .insert(key, bytes.as_slice())
            .map_err(db_err)?;
        tx.commit().map_err(db_err)
    }

    fn delete(&self, table: TableDefinition<&str, &[u8]>, key: &str) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        tx.open_table(table)
            .map_err(db_err)?
            .remove(key)
            .map_err(db_err)?;
        tx.commit().map_err(db_err)
    }

    pub(crate) fn instances(&self) -> Result<Vec<Instance>, StoreError> {
        Ok(self
            .instances_shared()?
            .iter()
            .map(|i| Instance::clone(i))
            .collect())
    }

    /// `instances`, shared with the store's copy: what queries read, without cloning.
    pub(crate) fn instances_shared(&self) -> Result<Vec<Arc<Instance>>, StoreError> {
        let mut out = self.instances.all()?;
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// The instances `keep` selects (what the start-up recovery steps each look for).
    pub(crate) fn instances_where(
        &self,
        keep: impl Fn(&Instance) -> bool,
    ) -> Result<Vec<Instance>, StoreError> {
        self.instances_where_dyn(&keep)
    }

    fn instances_where_dyn(
        &self,
        keep: &dyn Fn(&Instance) -> bool,
    ) -> Result<Vec<Instance>, StoreError> {
        let mut all = self.instances()?;
        all.retain(keep);
        Ok(all)
    }

    pub(crate) fn instance(&self, id: &str) -> Result<Option<Instance>, StoreError> {
        Ok(self.instances.get(id)?.map(|i| Instance::clone(&i)))
    }

    /// Inserts a new instance unless another instance of the same feature has its name; the
    /// check and the insert happen under the table's writer lock, against the copy (which is
    /// the committed table while that lock is held).
    pub(crate) fn insert_instance(&self, inst: &Instance) -> Result<(), StoreError> {
        self.instances.write(&inst.id, || {
            for other in self.instances.all()? {
                if other.feature_id == inst.feature_id && other.name == inst.name {
                    return Err(StoreError::NameTaken);
                }
            }
            self.put(INSTANCES, &inst.id, inst)?;
            Ok(((), Some(inst.clone())))
        })
    }

    /// Reads, changes and writes one instance in a single transaction; returns the record
    /// before and after the change.
    pub(crate) fn update_instance(
        &self,
        id: &str,
        change: impl FnOnce(&mut Instance),
    ) -> Result<(Instance, Instance), StoreError> {
        let mut change = Some(change);
        self.update_instance_dyn(id, &mut |i| {
            if let Some(c) = change.take() {
                c(i);
            }
        })
    }

    /// `update_instance`'s body, once (not inlined into every caller's closure).
    fn update_instance_dyn(
        &self,
        id: &str,
        change: &mut dyn FnMut(&mut Instance),
    ) -> Result<(Instance, Instance), StoreError> {
        self.instances.write(id, || {
            let tx = self.db.begin_write().map_err(db_err)?;
            let pair = {
                let mut t = tx.open_table(INSTANCES).map_err(db_err)?;
                let before: Instance = match t.get(id).map_err(db_err)? {
                    Some(v) => decode(INSTANCES, id, v.value())?,
                    None => return Err(StoreError::NotFound),
                };
                let mut after = before.clone();
                change(&mut after);
                after.updated_at = crate::util::now_ms().max(before.updated_at);
                let bytes = serde_json::to_vec(&after).map_err(db_err)?;
                t.insert(id, bytes.as_slice()).map_err(db_err)?;
                (before, after)
            };
            tx.commit().map_err(db_err)?;
            let after = pair.1.clone();
            Ok((pair, Some(after)))
        })
    }

    pub(crate) fn remove_instance(&self, id: &str) -> Result<(), StoreError> {
        self.instances
            .write(id, || self.delete(INSTANCES, id).map(|()| ((), None)))
    }

    pub(crate) fn download_state(&self, key: &str) -> Result<Option<DownloadState>, StoreError> {
        self.get(DOWNLOADS, key)
    }

    pub(crate) fn put_download_state(
        &self,
        key: &str,
        state: &DownloadState,
    ) -> Result<(), StoreError> {
        self.put(DOWNLOADS, key, state)
    }

    pub(crate) fn clear_download_state(&self, key: &str) -> Result<(), StoreError> {
        self.delete(DOWNLOADS, key)
    }

    pub(crate) fn artifact(&self, key: &str) -> Result<Option<Artifact>, StoreError> {
        self.get(ARTIFACTS, key)
    }

    pub(crate) fn put_artifact(&self, artifact: &Artifact) -> Result<(), StoreError> {
        self.put(ARTIFACTS, &artifact.key, artifact)
    }

    pub(crate) fn remove_artifact(&self, key: &str) -> Result<(), StoreError> {
        self.delete(ARTIFACTS, key)
    }

    pub(crate) fn interface(
        &self,
        instance_id: &str,
    ) -> Result<Option<InterfaceRecord>, StoreError> {
        Ok(self
            .interfaces
            .get(instance_id)?
            .map(|r| InterfaceRecord::clone(&r)))
    }

    /// `interface`, shared with the store's copy.
    pub(crate) fn interface_shared(
        &self,
        instance_id: &str,
    ) -> Result<Option<Arc<InterfaceRecord>>, StoreError> {
        self.interfaces.get(instance_id)
    }

    pub(crate) fn interfaces(&self) -> Result<Vec<InterfaceRecord>, StoreError> {
        let mut out: Vec<InterfaceRecord> = self
            .interfaces
            .all()?
            .iter()
            .map(|r| InterfaceRecord::clone(r))
            .collect();
        out.sort_by(|a: &InterfaceRecord, b| {
            a.router_id
                .cmp(&b.router_id)
                .then(a.vlan_id.cmp(&b.vlan_id))
        });
        Ok(out)
    }

    pub(crate) fn put_interface(&self, rec: &InterfaceRecord) -> Result<(), StoreError> {
        self.interfaces.write(&rec.instance_id, || {
            self.put(INTERFACES, &rec.instance_id, rec)
                .map(|()| ((), Some(rec.clone())))
        })
    }

    pub(crate) fn remove_interface(&self, instance_id: &str) -> Result<(), StoreError> {
        self.interfaces.write(instance_id, || {
            self.delete(INTERFACES, instance_id).map(|()| ((), None))
        })
    }

    /// The VLAN id of `owner` on `router`: the one it already holds, else the lowest free id
    /// of `pool`. One transaction, so two instances never get the same id.
    pub(crate) fn allocate_vlan(
        &self,
        router: &str,
        pool: [u16; 2],
        owner: &str,
    ) -> Result<u16, StoreError> {
        let prefix = format!("{router}/");
        let tx = self.db.begin_write().map_err(db_err)?;
        let id = {
            let mut t = tx.open_table(VLANS).map_err(db_err)?;
            let mut taken = std::collections::BTreeSet::new();
            for row in t.iter().map_err(db_err)? {
                let (k, v) = row.map_err(db_err)?;
                let Some(id) = k
                    .value()
                    .strip_prefix(&prefix)
                    .and_then(|n| n.parse::<u16>().ok())
                else {
                    continue;
                };
                if v.value() == owner {
                    return Ok(id);
                }
                taken.insert(id);
            }
            let id = (pool[0]..=pool[1])
                .find(|id| !taken.contains(id))
                .ok_or(StoreError::PoolExhausted)?;
            t.insert(format!("{prefix}{id:04}").as_str(), owner)
                .map_err(db_err)?;
            id
        };
        tx.commit().map_err(db_err)?;
        Ok(id)
    }

    /// The service uid of `owner`: the one it holds, else the lowest free one in `range`.
    pub(crate) fn allocate_uid(&self, range: [u32; 2], owner: &str) -> Result<u32, StoreError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        let uid = {
            let mut t = tx.open_table(UIDS).map_err(db_err)?;
            let mut taken = std::collections::BTreeSet::new();
            for row in t.iter().map_err(db_err)? {
                let (k, v) = row.map_err(db_err)?;
                if v.value() == owner {
                    return Ok(k.value());
                }
                taken.insert(k.value());
            }
            let uid = (range[0]..=range[1])
                .find(|u| !taken.contains(u))
                .ok_or(StoreError::PoolExhausted)?;
            t.insert(uid, owner).map_err(db_err)?;
            uid
        };
        tx.commit().map_err(db_err)?;
        Ok(uid)
    }

    pub(crate) fn trust_value(&self, key: &str) -> Result<Option<serde_json::Value>, StoreError> {
        self.get(TRUST, key)
    }

    pub(crate) fn put_trust_value(
        &self,
        key: &str,
        v: &serde_json::Value,
    ) -> Result<(), StoreError> {
        self.put(TRUST, key, v)
    }

    /// Removes every trust entry under `prefix`; returns how many there were.
    pub(crate) fn remove_trust_prefix(&self, prefix: &str) -> Result<usize, StoreError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        let n = {
            let mut t = tx.open_table(TRUST).map_err(db_err)?;
            let keys: Vec<String> = t
                .iter()
                .map_err(db_err)?
                .flatten()
                .map(|(k, _)| k.value().to_owned())
                .filter(|k| k.starts_with(prefix))
                .collect();
            for k in &keys {
                t.remove(k.as_str()).map_err(db_err)?;
            }
            keys.len()
        };
        tx.commit().map_err(db_err)?;
        Ok(n)
    }

    /// Every routed device, in device order.
    pub(crate) fn device_routes(&self) -> Result<Vec<DeviceRoute>, StoreError> {
        Ok(self.all(ROUTES)?.into_iter().map(|(_, r)| r).collect())
    }

    /// What update checks found, per feature id.
    pub(crate) fn updates_found(&self) -> Result<Vec<(String, UpdateFound)>, StoreError> {
        self.all(UPDATES)
    }

    pub(crate) fn put_update_found(
        &self,
        feature: &str,
        found: &UpdateFound,
    ) -> Result<(), StoreError> {
        self.put(UPDATES, feature, found)
    }

    /// Every row of `table`, decoded, in key order.
    fn all<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
    ) -> Result<Vec<(String, T)>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(table).map_err(db_err)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            out.push((k.value().to_owned(), decode(table, k.value(), v.value())?));
        }
        Ok(out)
    }

    /// Removes the routes of `remove` and writes `put` (which may move a device to another
    /// instance), in one transaction.
    pub(crate) fn change_routes(
        &self,
        put: &[DeviceRoute],
        remove: &[String],
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(ROUTES).map_err(db_err)?;
            for d in remove {
                t.remove(d.as_str()).map_err(db_err)?;
            }
            for r in put {
                let bytes = serde_json::to_vec(r).map_err(db_err)?;
                t.insert(r.device.as_str(), bytes.as_slice())
                    .map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)
    }

    pub(crate) fn release_uid(&self, uid: u32) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        tx.open_table(UIDS)
            .map_err(db_err)?
            .remove(uid)
            .map_err(db_err)?;
        tx.commit().map_err(db_err)
    }

    pub(crate) fn release_vlan(&self, router: &str, id: u16) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        tx.open_table(VLANS)
            .map_err(db_err)?
            .remove(format!("{router}/{id:04}").as_str())
            .map_err(db_err)?;
        tx.commit().map_err(db_err)
    }
}

fn decode<T: DeserializeOwned>(
    table: TableDefinition<&str, &[u8]>,
    key: &str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        table: redb::TableHandle::name(&table).to_owned(),
        key: key.to_owned(),
        error: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_store() -> (Store, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "nnc-store-{}-{}",
            std::process::id(),
            crate::util::random_hex(4).unwrap()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        (Store::open(&dir.join("state.redb")).unwrap(), dir)
    }

    fn instance(id: &str, feature: &str, name: &str) -> Instance {
        Instance {
            version: "1".into(),
            arch: "x86_64".into(),
            created_at: 1,
            updated_at: 1,
            ..Instance::queued(id.into(), feature.into(), "local".into(), name.into())
        }
    }

    #[test]
    fn names_are_unique_per_feature_only() {
        let (s, dir) = temp_store();
        s.insert_instance(&instance("a", "tor", "home")).unwrap();
        assert!(matches!(
            s.insert_instance(&instance("b", "tor", "home")),
            Err(StoreError::NameTaken)
        ));
        s.insert_instance(&instance("c", "sing-box", "home"))
            .unwrap();
        assert_eq!(s.instances().unwrap().len(), 2);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn updates_persist_across_reopen() {
        let (s, dir) = temp_store();
        s.insert_instance(&instance("a", "tor", "home")).unwrap();
        let (before, after) = s
            .update_instance("a", |i| i.status = Status::Downloading)
            .unwrap();
        assert_eq!(before.status, Status::Queued);
        assert_eq!(after.status, Status::Downloading);
        drop(s);
        let s = Store::open(&dir.join("state.redb")).unwrap();
        assert_eq!(
            s.instance("a").unwrap().unwrap().status,
            Status::Downloading
        );
        assert!(matches!(
            s.update_instance("zz", |_| {}),
            Err(StoreError::NotFound)
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_copy_follows_every_write_and_keeps_a_damaged_record_as_its_error() {
        let (s, dir) = temp_store();
        s.insert_instance(&instance("a", "tor", "home")).unwrap();
        s.insert_instance(&instance("b", "tor", "work")).unwrap();
        assert!(s.insert_instance(&instance("c", "tor", "home")).is_err());
        assert!(
            s.instance("c").unwrap().is_none(),
            "a refused insert leaves no copy"
        );
        s.update_instance("a", |i| i.status = Status::Running)
            .unwrap();
        s.remove_instance("b").unwrap();
        let ids = |v: Vec<Instance>| v.into_iter().map(|i| (i.id, i.status)).collect::<Vec<_>>();
        assert_eq!(ids(s.instances().unwrap()), [("a".into(), Status::Running)]);
        assert_eq!(s.instances_shared().unwrap()[0].status, Status::Running);
        drop(s);
        // What a damaged file (or an incompatible agent) leaves: a record that does not decode.
        {
            let db = Database::create(dir.join("state.redb")).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(INSTANCES)
                .unwrap()
                .insert("bad", b"{not json".as_slice())
                .unwrap();
            tx.commit().unwrap();
        }
        let s = Store::open(&dir.join("state.redb")).unwrap();
        assert_eq!(s.instance("a").unwrap().unwrap().status, Status::Running);
        assert!(matches!(s.instance("bad"), Err(StoreError::Corrupt { key, .. }) if key == "bad"));
        assert!(matches!(s.instances(), Err(StoreError::Corrupt { .. })));
        s.remove_instance("bad").unwrap();
        assert_eq!(s.instances().unwrap().len(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn vlan_ids_are_allocated_once_per_owner_and_reused_after_release() {
        let (s, dir) = temp_store();
        assert_eq!(s.allocate_vlan("local", [100, 102], "a").unwrap(), 100);
        assert_eq!(s.allocate_vlan("local", [100, 102], "b").unwrap(), 101);
        assert_eq!(
            s.allocate_vlan("local", [100, 102], "a").unwrap(),
            100,
            "idempotent"
        );
        assert_eq!(
            s.allocate_vlan("other", [100, 102], "c").unwrap(),
            100,
            "pools are per router"
        );
        assert_eq!(s.allocate_vlan("local", [100, 102], "c").unwrap(), 102);
        assert!(matches!(
            s.allocate_vlan("local", [100, 102], "d"),
            Err(StoreError::PoolExhausted)
        ));
        s.release_vlan("local", 101).unwrap();
        assert_eq!(s.allocate_vlan("local", [100, 102], "d").unwrap(), 101);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn strong_etag_preferred_as_validator() {
        let mut st = DownloadState {
            etag: Some("\"abc\"".into()),
            last_modified: Some("Tue, 01 Jan 2026 00:00:00 GMT".into()),
            ..Default::default()
        };
        assert_eq!(st.validator(), Some("\"abc\""));
        st.etag = Some("W/\"abc\"".into());
        assert_eq!(st.validator(), Some("Tue, 01 Jan 2026 00:00:00 GMT"));
    }
}
