//! All tables and the seeded RNG that drives every write: the initial load,
//! explicit changes from tests, and random writes.

use std::time::{Duration, SystemTime};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value};

use crate::records::{self, Kind, Refs};
use crate::table::{Table, Version};
use crate::{Applied, Change, Op, Order, SimConfig, SimError};

/// Share of initial records that start out soft deleted.
const INITIAL_DELETED: f64 = 0.03;
/// Random probes for a record a random write can act on before giving up.
const PROBES: usize = 32;

/// Which writes commit late, from the current faults.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Late {
    pub rate: f64,
    pub after: u32,
}

pub(super) struct Dataset {
    /// Indexed by [`Kind::slot`].
    tables: Vec<Table>,
    rng: StdRng,
    seed: u64,
    order: Order,
    gap_rate: f64,
    /// `SimConfig::stamp_group`, and per table the stamp a group is filling
    /// with the writes it still takes; set only while `grouping`.
    group: usize,
    held: Vec<Option<(u64, usize)>>,
    grouping: bool,
}

impl Dataset {
    /// The tables with their initial records, generated from the seed.
    /// Unknown table names in `config.initial` are skipped with a warning.
    pub fn new(config: &SimConfig) -> Dataset {
        let mut data = Dataset {
            tables: Kind::ALL.iter().map(|_| Table::new(config.order)).collect(),
            rng: StdRng::seed_from_u64(config.seed),
            seed: config.seed,
            order: config.order,
            gap_rate: config.stamp_gap_rate,
            group: config.stamp_group.max(1),
            held: Kind::ALL.iter().map(|_| None).collect(),
            grouping: false,
        };
        for (name, _) in &config.initial {
            if Kind::parse(name).is_none() {
                tracing::warn!(table = %name, "simulator has no such table; skipping its initial records");
            }
        }
        for kind in Kind::ALL {
            let count = config
                .initial
                .iter()
                .filter(|(t, _)| t == kind.name())
                .map(|(_, n)| n)
                .sum();
            data.generate_initial(kind, count);
        }
        data
    }

    pub fn table(&self, kind: Kind) -> &Table {
        &self.tables[kind.slot()]
    }

    pub(crate) fn table_mut(&mut self, kind: Kind) -> &mut Table {
        &mut self.tables[kind.slot()]
    }

    fn generate_initial(&mut self, kind: Kind, count: usize) {
        for n in 0..count {
            let id = records::new_uuid(&mut self.rng);
            let refs = self.refs(kind);
            let created = records::initial_created(&mut self.rng, n, count);
            let mut map = records::generate(kind, &mut self.rng, &id, &refs, created);
            if self.rng.random_bool(INITIAL_DELETED) {
                let deleted =
                    created + Duration::from_secs(self.rng.random_range(3600..90 * 86_400));
                mark_deleted(kind, &mut map, deleted);
            }
            self.grouped(|data| data.write(kind, &id, map, Late::default()));
        }
        self.end_groups();
    }

    /// Runs `write` with stamps shared in groups of `stamp_group`.
    pub fn grouped<T>(&mut self, write: impl FnOnce(&mut Dataset) -> T) -> T {
        self.grouping = true;
        let out = write(self);
        self.grouping = false;
        out
    }

    /// Ends every group: later writes take stamps of their own.
    pub fn end_groups(&mut self) {
        self.held.iter_mut().for_each(|h| *h = None);
    }

    /// The stamp of the next write to `kind`: the held one of its group,
    /// or a new one.
    fn stamp_for(&mut self, kind: Kind) -> u64 {
        let slot = kind.slot();
        if self.grouping
            && let Some((stamp, left)) = &mut self.held[slot]
            && *left > 0
        {
            *left -= 1;
            return *stamp;
        }
        let gap = if self.gap_rate > 0.0 && self.rng.random_bool(self.gap_rate) {
            self.rng.random_range(1..=3)
        } else {
            0
        };
        let stamp = self.table_mut(kind).next_stamp(gap);
        if self.grouping && self.group > 1 {
            self.held[slot] = Some((stamp, self.group - 1));
        }
        stamp
    }

    /// Random ids from the tables this kind references.
    fn refs(&mut self, kind: Kind) -> Refs {
        let mut refs = Refs::default();
        for &target in kind.references() {
            let table = &self.tables[target.slot()];
            let id = (table.len() > 0).then(|| {
                table
                    .id(self.rng.random_range(0..table.len()) as u32)
                    .to_owned()
            });
            match target {
                Kind::Sites => refs.site = id,
                Kind::Patients => refs.patient = id,
                Kind::Users => refs.user = id,
                Kind::Assessments | Kind::Comments => {}
            }
        }
        refs
    }

    /// Stamps and stores a new version; returns its stamp and whether it is late.
    fn write(
        &mut self,
        kind: Kind,
        id: &str,
        mut map: Map<String, Value>,
        late: Late,
    ) -> (u64, bool) {
        let shared = self.grouping && self.group > 1;
        let is_late = !shared && late.rate > 0.0 && self.rng.random_bool(late.rate);
        let stamp = self.stamp_for(kind);
        let (order, seed) = (self.order, self.seed);
        let table = self.table_mut(kind);
        map.insert("uuid".into(), id.into());
        map.insert("update_stamp".into(), stamp.into());
        let key = match order {
            Order::Stamp => Box::default(),
            Order::Name => records::name_key(kind, &map, id),
            Order::Random => records::random_key(seed, id),
        };
        let version = Version {
            stamp,
            deleted: map.get("deleted_at").is_some_and(|v| !v.is_null()),
            json: records::encode(kind, &map).into(),
            key,
        };
        table.write(id, version, is_late.then_some(late.after));
        (stamp, is_late)
    }

    /// Applies one change. An update, delete or restore without an id acts on
    /// a random record that allows it; one on a record with a pending late
    /// write commits that write first, so versions stay in stamp order.
    pub fn apply(&mut self, change: &Change, late: Late) -> Result<Applied, SimError> {
        let kind = Kind::parse(&change.table)
            .ok_or_else(|| SimError::UnknownTable(change.table.clone()))?;
        let now = SystemTime::now();
        let (id, mut map) = match change.op {
            Op::Create => self.fresh(kind, change.id.clone(), now)?,
            op => self.current(kind, op, change.id.as_deref())?,
        };
        match change.op {
            Op::Create => {}
            Op::Update if change.fields.is_none() => records::mutate(kind, &mut map, &mut self.rng),
            Op::Update => {}
            Op::Delete => mark_deleted(kind, &mut map, now),
            Op::Restore => {
                map.insert("deleted_at".into(), Value::Null);
                if kind == Kind::Patients {
                    map.insert("deleted_reason".into(), Value::Null);
                }
            }
        }
        if change.op != Op::Create {
            map.insert("modified_at".into(), records::rfc3339(now).into());
        }
        map.extend(
            change
                .fields
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        let (stamp, late) = self.write(kind, &id, map, late);
        Ok(Applied {
            table: kind.name().to_owned(),
            id,
            stamp,
            op: change.op,
            late,
        })
    }

    /// A generated record for a create, under `id` or a new uuid.
    fn fresh(
        &mut self,
        kind: Kind,
        id: Option<String>,
        now: SystemTime,
    ) -> Result<(String, Map<String, Value>), SimError> {
        let id = id.unwrap_or_else(|| records::new_uuid(&mut self.rng));
        if self.table(kind).find(&id).is_some() {
            let table = kind.name();
            return Err(SimError::DuplicateId { table, id });
        }
        let refs = self.refs(kind);
        let map = records::generate(kind, &mut self.rng, &id, &refs, now);
        Ok((id, map))
    }

    /// The current version of the record `op` acts on, checked against `op`.
    fn current(
        &mut self,
        kind: Kind,
        op: Op,
        id: Option<&str>,
    ) -> Result<(String, Map<String, Value>), SimError> {
        let table = kind.name();
        let rec = match id {
            Some(id) => self.table(kind).find(id).ok_or_else(|| {
                let id = id.to_owned();
                SimError::UnknownRecord { table, id }
            })?,
            None => self
                .pick(kind, op)
                .ok_or(SimError::NothingToChange { table, op })?,
        };
        self.table_mut(kind).commit_record(rec);
        let id = self.table(kind).id(rec).to_owned();
        let current = self
            .table(kind)
            .visible(rec)
            .expect("a committed record is visible");
        match (op, current.deleted) {
            (Op::Delete, true) => Err(SimError::AlreadyDeleted { table, id }),
            (Op::Restore, false) => Err(SimError::NotDeleted { table, id }),
            _ => {
                let map =
                    serde_json::from_str(&current.json).expect("stored versions are valid JSON");
                Ok((id, map))
            }
        }
    }

    /// A random record `op` can act on: visible, without a pending write, and
    /// deleted exactly when restoring. None when random probes find none.
    fn pick(&mut self, kind: Kind, op: Op) -> Option<u32> {
        let len = self.table(kind).len();
        if len == 0 {
            return None;
        }
        (0..PROBES).find_map(|_| {
            let rec = self.rng.random_range(0..len) as u32;
            let table = self.table(kind);
            let version = table.visible(rec)?;
            let fits = !table.has_pending(rec) && version.deleted == (op == Op::Restore);
            fits.then_some(rec)
        })
    }

    /// One random write: mostly updates, some creates, a few deletes and
    /// restores; falls back to an update, then a create, when no record fits.
    pub fn random_write(&mut self, kind: Kind, late: Late) -> Applied {
        let roll = self.rng.random_range(0..100);
        let wanted = match roll {
            0..30 => Op::Create,
            30..85 => Op::Update,
            85..95 => Op::Delete,
            _ => Op::Restore,
        };
        let target = if wanted == Op::Create {
            None
        } else {
            let fallback =
                |data: &mut Dataset| data.pick(kind, Op::Update).map(|rec| (Op::Update, rec));
            self.pick(kind, wanted)
                .map(|rec| (wanted, rec))
                .or_else(|| fallback(self))
        };
        let change = match target {
            Some((op, rec)) => Change::new(kind.name(), op).with_id(self.table(kind).id(rec)),
            None => Change::new(kind.name(), Op::Create),
        };
        self.apply(&change, late)
            .expect("random writes pick records that allow them")
    }

    /// A random table, weighted towards the clinical tables.
    pub fn random_kind(&mut self) -> Kind {
        let total: u32 = Kind::ALL.iter().map(|k| k.write_weight()).sum();
        let mut roll = self.rng.random_range(0..total);
        for kind in Kind::ALL {
            if roll < kind.write_weight() {
                return kind;
            }
            roll -= kind.write_weight();
        }
        unreachable!("the roll is below the total weight")
    }

    /// Makes every pending late write visible; returns how many there were.
    pub fn flush_late(&mut self) -> usize {
        self.tables.iter_mut().map(|t| t.commit_due(true)).sum()
    }

    pub fn add_raw(&mut self, kind: Kind, record: &Value) {
        self.table_mut(kind).add_raw(record);
    }
}

fn mark_deleted(kind: Kind, map: &mut Map<String, Value>, at: SystemTime) {
    let at = records::rfc3339(at);
    map.insert("modified_at".into(), at.clone().into());
    map.insert("deleted_at".into(), at.into());
    if kind == Kind::Patients {
        map.insert("deleted_reason".into(), "archived".into());
    }
}
