//! PainChek-like records: the five tables, generated field values, random
//! edits, and the JSON encoding with a stable field order.
//!
//! Records are generated from the seeded RNG only, so one seed always yields
//! the same initial data; wall-clock time appears only in `modified_at` and
//! `deleted_at` of writes made while the simulator runs.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use serde_json::{Map, Value, json};

/// The upstream's tables, in the order initial data is generated (a table's
/// references point at tables generated before it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Sites,
    Users,
    Patients,
    Assessments,
    Comments,
}

/// The fields every record ends with (`deleted_reason` only on patients).
const COMMON_TAIL: [&str; 5] = [
    "created_at",
    "modified_at",
    "deleted_at",
    "deleted_reason",
    "update_stamp",
];

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Sites,
        Kind::Users,
        Kind::Patients,
        Kind::Assessments,
        Kind::Comments,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Sites => "sites",
            Kind::Users => "users",
            Kind::Patients => "patients",
            Kind::Assessments => "assessments",
            Kind::Comments => "comments",
        }
    }

    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Position in [`Kind::ALL`].
    pub(super) fn slot(self) -> usize {
        self as usize
    }

    /// Share of background writes that land on this table: clinical data
    /// changes far more often than the directory tables.
    pub(super) fn write_weight(self) -> u32 {
        match self {
            Kind::Patients | Kind::Assessments => 35,
            Kind::Comments => 15,
            Kind::Users => 10,
            Kind::Sites => 5,
        }
    }

    /// Field order of the encoded JSON, before the common tail; fields outside
    /// this list (added through the admin API) follow in name order.
    fn leading_fields(self) -> &'static [&'static str] {
        match self {
            Kind::Patients => &[
                "uuid",
                "first_name",
                "last_name",
                "date_of_birth",
                "gender",
                "site",
                "room",
                "external_id",
            ],
            Kind::Assessments => &[
                "uuid",
                "patient",
                "user",
                "score",
                "pain_level",
                "assessment_type",
                "assessed_at",
            ],
            Kind::Users => &[
                "uuid",
                "username",
                "first_name",
                "last_name",
                "email",
                "role",
                "site",
            ],
            Kind::Sites => &["uuid", "name", "timezone", "address"],
            Kind::Comments => &["uuid", "patient", "user", "text"],
        }
    }

    /// The tables whose ids this table's records reference.
    pub(super) fn references(self) -> &'static [Kind] {
        match self {
            Kind::Sites => &[],
            Kind::Users | Kind::Patients => &[Kind::Sites],
            Kind::Assessments | Kind::Comments => &[Kind::Patients, Kind::Users],
        }
    }
}

const FEMALE_NAMES: &[&str] = &[
    "Margaret", "Dorothy", "Joan", "Betty", "Patricia", "Shirley", "Barbara", "Jean", "Mary",
    "Elaine", "Maureen", "Valerie", "Gwen", "Ivy",
];
const MALE_NAMES: &[&str] = &[
    "Robert", "John", "William", "James", "Kenneth", "Ronald", "Peter", "Graham", "Raymond",
    "Norman", "Keith", "Alan", "Colin", "Arthur",
];
const LAST_NAMES: &[&str] = &[
    "Smith", "Jones", "Williams", "Brown", "Wilson", "Taylor", "Johnson", "White", "Martin",
    "Anderson", "Thompson", "Nguyen", "Thomas", "Walker", "Harris", "Lee", "Ryan", "Robinson",
    "Kelly", "King", "Davis", "Wright", "Evans", "Roberts", "Green", "Hall", "Wood", "Jackson",
    "Clarke", "Patel", "Khan", "Lewis", "James", "Phillips", "Mitchell", "Campbell", "Young",
    "Allen", "Scott", "Baker",
];
const SUBURBS: &[&str] = &[
    "Subiaco",
    "Fremantle",
    "Joondalup",
    "Carlton",
    "Fitzroy",
    "Parramatta",
    "Bondi",
    "Toowong",
    "Glenelg",
    "Sandy Bay",
    "Woden",
    "Nightcliff",
];
const TIMEZONES: &[&str] = &[
    "Australia/Perth",
    "Australia/Melbourne",
    "Australia/Sydney",
    "Australia/Brisbane",
    "Australia/Adelaide",
    "Australia/Hobart",
    "Europe/London",
    "Pacific/Auckland",
];
const ROLES: &[&str] = &["carer", "nurse", "clinical_manager", "admin"];
const COMMENTS: &[&str] = &[
    "Resident settled after repositioning.",
    "Grimacing during transfer; GP informed.",
    "Paracetamol given as charted, reassess in one hour.",
    "Family visited, resident calmer afterwards.",
    "Refused breakfast, guarding left hip.",
    "Slept well overnight, no signs of discomfort.",
];

/// Ids of referenced records, chosen by the caller from other tables.
#[derive(Default)]
pub(super) struct Refs {
    pub site: Option<String>,
    pub patient: Option<String>,
    pub user: Option<String>,
}

/// Start of the generated history: initial records were created after this.
const EPOCH_2022: u64 = 1_640_995_200;

pub(super) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

/// A fresh uuid from the seeded RNG, so ids repeat with the seed.
pub(super) fn new_uuid(rng: &mut StdRng) -> String {
    uuid::Builder::from_random_bytes(rng.random())
        .into_uuid()
        .to_string()
}

/// A complete new record of `kind`, without `update_stamp` (the table sets it).
pub(super) fn generate(
    kind: Kind,
    rng: &mut StdRng,
    id: &str,
    refs: &Refs,
    created: SystemTime,
) -> Map<String, Value> {
    let person = Person::pick(rng);
    let mut map = match kind {
        Kind::Patients => patient(rng, refs, &person),
        Kind::Assessments => assessment(rng, refs, created),
        Kind::Users => user(rng, refs, &person),
        Kind::Sites => site(rng, person.last),
        Kind::Comments => json!({
            "patient": refs.patient,
            "user": refs.user,
            "text": pick(COMMENTS, rng),
        }),
    };
    let Value::Object(fields) = &mut map else {
        unreachable!("json! object literal")
    };
    let mut fields = std::mem::take(fields);
    fields.insert("uuid".into(), id.into());
    fields.insert("created_at".into(), rfc3339(created).into());
    fields.insert("modified_at".into(), rfc3339(created).into());
    fields.insert("deleted_at".into(), Value::Null);
    fields
}

/// A gender and a name to match, drawn for every record (in this order, so
/// the seeded RNG gives the same records) whether its kind uses them or not.
struct Person {
    gender: &'static str,
    first: &'static str,
    last: &'static str,
}

impl Person {
    fn pick(rng: &mut StdRng) -> Person {
        let gender = pick(&["female", "male", "female", "male", "other"], rng);
        let names = if gender == "male" {
            MALE_NAMES
        } else {
            FEMALE_NAMES
        };
        let (first, last) = (pick(names, rng), pick(LAST_NAMES, rng));
        Person {
            gender,
            first,
            last,
        }
    }
}

fn patient(rng: &mut StdRng, refs: &Refs, p: &Person) -> Value {
    // Residents of aged care, born 1922-1962; day 28 at most keeps it a valid date.
    let born = (
        rng.random_range(1922..1962),
        rng.random_range(1..=12),
        rng.random_range(1..=28),
    );
    json!({
        "first_name": p.first,
        "last_name": p.last,
        "date_of_birth": format!("{:04}-{:02}-{:02}", born.0, born.1, born.2),
        "gender": p.gender,
        "site": refs.site,
        "room": format!("{}{}", rng.random_range(1..60), pick(&["", "A", "B"], rng)),
        "external_id": format!("MRN-{:06}", rng.random_range(0..1_000_000)),
        "deleted_reason": null,
    })
}

fn assessment(rng: &mut StdRng, refs: &Refs, created: SystemTime) -> Value {
    let score = rng.random_range(0..=42u32);
    json!({
        "patient": refs.patient,
        "user": refs.user,
        "score": score,
        "pain_level": pain_level(score),
        "assessment_type": pick(&["rest", "movement"], rng),
        "assessed_at": rfc3339(created - Duration::from_secs(rng.random_range(0..7200))),
    })
}

fn user(rng: &mut StdRng, refs: &Refs, p: &Person) -> Value {
    let (first, last) = (p.first, p.last);
    json!({
        "username": format!("{}.{}{}", first.to_lowercase(), last.to_lowercase(),
            rng.random_range(1..100)),
        "first_name": first,
        "last_name": last,
        "email": format!("{}.{}@example.org", first.to_lowercase(), last.to_lowercase()),
        "role": pick(ROLES, rng),
        "site": refs.site,
    })
}

fn site(rng: &mut StdRng, last: &str) -> Value {
    let suburb = pick(SUBURBS, rng);
    json!({
        "name": format!("{suburb} {}", pick(&["Aged Care", "Lodge", "Gardens", "House"], rng)),
        "timezone": pick(TIMEZONES, rng),
        "address": format!("{} {last} Street, {suburb}", rng.random_range(1..300)),
    })
}

/// Creation time of the `n`-th initial record: spread over the year after
/// the epoch, ascending with `n` but jittered, as uploads from devices are.
pub(super) fn initial_created(rng: &mut StdRng, n: usize, total: usize) -> SystemTime {
    let spread = 365 * 86_400 / total.max(1) as u64;
    at(EPOCH_2022 + n as u64 * spread + rng.random_range(0..=spread))
}

fn pain_level(score: u32) -> &'static str {
    match score {
        0..=6 => "no_pain",
        7..=11 => "mild",
        12..=15 => "moderate",
        _ => "severe",
    }
}

/// Applies a plausible random edit. Patients and users sometimes change
/// `last_name` so that they move while a client pages in name order.
pub(super) fn mutate(kind: Kind, map: &mut Map<String, Value>, rng: &mut StdRng) {
    let renamed = rng.random_bool(0.4);
    match kind {
        Kind::Patients if renamed => set(map, "last_name", pick(LAST_NAMES, rng)),
        Kind::Patients => set(
            map,
            "room",
            format!("{}{}", rng.random_range(1..60), pick(&["", "A", "B"], rng)),
        ),
        Kind::Users if renamed => set(map, "last_name", pick(LAST_NAMES, rng)),
        Kind::Users => set(map, "role", pick(ROLES, rng)),
        Kind::Sites => set(map, "timezone", pick(TIMEZONES, rng)),
        Kind::Assessments => {
            let score = rng.random_range(0..=42u32);
            set(map, "score", score);
            set(map, "pain_level", pain_level(score));
        }
        Kind::Comments => set(map, "text", pick(COMMENTS, rng)),
    }
}

fn pick(list: &[&'static str], rng: &mut StdRng) -> &'static str {
    list.choose(rng).expect("lists are not empty")
}

fn set(map: &mut Map<String, Value>, field: &str, value: impl Into<Value>) {
    map.insert(field.to_owned(), value.into());
}

/// The record as compact JSON: the table's leading fields, any others by
/// name, then the common tail, so every version of a record reads alike.
pub(super) fn encode(kind: Kind, map: &Map<String, Value>) -> String {
    let mut out = String::with_capacity(400);
    out.push('{');
    let leading = kind.leading_fields();
    let known = |k: &str| leading.contains(&k) || COMMON_TAIL.contains(&k);
    let fields = leading
        .iter()
        .filter_map(|&k| map.get_key_value(k))
        .chain(map.iter().filter(|(k, _)| !known(k)))
        .chain(COMMON_TAIL.iter().filter_map(|&k| map.get_key_value(k)));
    for (n, (key, value)) in fields.enumerate() {
        let comma = if n == 0 { "" } else { "," };
        write!(out, "{comma}{}:{value}", Value::from(key.as_str()))
            .expect("writing to a String cannot fail");
    }
    out.push('}');
    out
}

/// The sort key of `Order::Name`: surname then first name for people, the
/// name for sites, and the id (stable, unrelated to stamps) for the rest.
pub(super) fn name_key(kind: Kind, map: &Map<String, Value>, id: &str) -> Box<str> {
    let text = |k: &str| map.get(k).and_then(Value::as_str).unwrap_or("");
    match kind {
        Kind::Patients | Kind::Users => {
            format!("{}\0{}", text("last_name"), text("first_name")).into()
        }
        Kind::Sites => text("name").into(),
        Kind::Assessments | Kind::Comments => id.into(),
    }
}

/// The sort key of `Order::Random`: a hash of seed and id, fixed for the
/// record's life so that paging stays meaningful.
pub(super) fn random_key(seed: u64, id: &str) -> Box<str> {
    // FNV-1a, then the splitmix64 finaliser to spread nearby ids.
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in id.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    format!("{:016x}", h ^ (h >> 31)).into()
}
