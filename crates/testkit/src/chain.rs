//! Joins across three to five members: a registry of patients (the querier) and two to four
//! hospitals, each serving its visits on its own in-process server with its relay key, and
//! the plain answers their queries must give.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cleanroom_psi::sealed::OpeningKey;
use cleanroom_rules::Collaboration;
use cleanroom_service::{BearerToken, ClientConfig, Limits, ServerConfig, StateDb};

use crate::collaboration::{CollaborationToml, MemberToml, TableToml};
use crate::fixture::{Csv, Rng};
use crate::server::{Running, serve_in_process};

/// The registry's bearer token.
pub const REGISTRY_TOKEN: &str = "registry-secret-token";

/// The diagnoses of the hospitals' visits.
pub const DIAGNOSES: [&str; 3] = ["flu", "cold", "burn"];

/// The registry and its hospitals, their tables on disk, their relay keys.
pub struct Hospitals {
    /// The directory of the tables.
    pub dir: tempfile::TempDir,
    /// The collaboration.
    pub collaboration: Arc<Collaboration>,
    /// The registry's `patients` (`email, region, cost`).
    pub patients: Csv,
    /// Each hospital's `visits_<h>` (`email, diagnosis`), `hospital_a` first.
    pub visits: Vec<Csv>,
    /// Each hospital's relay key (secret bytes), in the same order.
    relay_keys: Vec<[u8; 32]>,
}

/// The name of hospital `h` (0: `a`) and of its table.
pub fn hospital(h: usize) -> (String, String) {
    let letter = char::from(b'a' + h as u8);
    (format!("hospital_{letter}"), format!("visits_{letter}"))
}

fn email(i: u64) -> String {
    format!("Patient{i}@Example.org")
}

impl Hospitals {
    /// A registry of 400 patients and `hospitals` (2 to 4) hospitals of about 300 visits each
    /// (a patient may visit twice), every table with `min_threshold = threshold`.
    pub fn new(hospitals: usize, threshold: u64) -> Hospitals {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = Rng(0xC0FFEE);
        let regions = ["north", "south", "east"];
        let patients = Csv {
            header: vec!["email".into(), "region".into(), "cost".into()],
            rows: (0..400u64)
                .map(|i| {
                    vec![
                        email(i),
                        regions[(i % 3) as usize].to_owned(),
                        (1 + rng.below(500)).to_string(),
                    ]
                })
                .collect(),
        };
        let visits: Vec<Csv> = (0..hospitals)
            .map(|h| {
                let mut rows = Vec::new();
                for i in 0..500u64 {
                    // Each hospital sees most patients, not the same ones.
                    if rng.below(100) < 75 || i % (h as u64 + 5) == 0 {
                        let diagnosis = DIAGNOSES[rng.below(3) as usize];
                        rows.push(vec![email(i).to_lowercase(), diagnosis.to_owned()]);
                        if rng.below(10) == 0 {
                            rows.push(vec![format!(" {} ", email(i)), diagnosis.to_owned()]);
                        }
                    }
                }
                Csv {
                    header: vec!["email".into(), "diagnosis".into()],
                    rows,
                }
            })
            .collect();
        let relay_keys: Vec<[u8; 32]> = (0..hospitals)
            .map(|_| *OpeningKey::generate().to_bytes())
            .collect();
        let mut toml = CollaborationToml::new("hospitals")
            .member(MemberToml::querier("registry", REGISTRY_TOKEN))
            .table(
                TableToml::aggregation("patients", "registry", &["email", "region", "cost"])
                    .dimensions(&["region"])
                    .aggregates(r#"email = ["COUNT_DISTINCT"], cost = ["SUM", "AVG"]"#)
                    .min_threshold(threshold),
            );
        for (h, key) in relay_keys.iter().enumerate() {
            let (member, table) = hospital(h);
            let public = OpeningKey::from_bytes(*key).unwrap().sealing_key();
            toml = toml
                .member(
                    MemberToml::new(&member, &format!("{member}-token")).line(&format!(
                        "relay_key = \"{}\"",
                        hex::encode(public.to_bytes())
                    )),
                )
                .table(
                    TableToml::aggregation(&table, &member, &["email", "diagnosis"])
                        .dimensions(&["diagnosis"])
                        .min_threshold(threshold),
                );
        }
        patients.write(&dir.path().join("patients.csv"));
        for (h, csv) in visits.iter().enumerate() {
            csv.write(&dir.path().join(format!("{}.csv", hospital(h).1)));
        }
        let collaboration =
            Arc::new(Collaboration::from_toml_str(&toml.render(), "hospitals.toml").unwrap());
        Hospitals {
            dir,
            collaboration,
            patients,
            visits,
            relay_keys,
        }
    }

    /// The registry's data: `patients` and where it is.
    pub fn registry_data(&self) -> BTreeMap<String, cleanroom_data::TableSpec> {
        BTreeMap::from([(
            "patients".to_owned(),
            self.dir.path().join("patients.csv").into(),
        )])
    }

    /// Hospital `h`'s server configuration, with its relay key, recording in a fresh state.
    pub fn config(&self, h: usize) -> ServerConfig {
        let (member, table) = hospital(h);
        let state = self.dir.path().join(format!("state-{member}.db"));
        ServerConfig {
            collaboration: Arc::clone(&self.collaboration),
            member,
            data: BTreeMap::from([(
                table.clone(),
                self.dir.path().join(format!("{table}.csv")).into(),
            )]),
            limits: Limits::default(),
            connections: cleanroom_service::ConnectionLimits::default(),
            state: Arc::new(StateDb::open(state).unwrap()),
            tls: None,
            client_ca: None,
            insecure: false,
            on_session_end: None,
            work_dir: None,
            relay_key: Some(Arc::new(
                OpeningKey::from_bytes(self.relay_keys[h]).unwrap(),
            )),
        }
    }

    /// Every hospital's server, in hospital order.
    pub async fn start(&self) -> Vec<Running> {
        let mut running = Vec::new();
        for h in 0..self.visits.len() {
            running.push(serve_in_process(self.config(h)).await);
        }
        running
    }

    /// The registry's client configuration of each hospital's table, on `servers`.
    pub fn servers(&self, servers: &[Running]) -> BTreeMap<String, ClientConfig> {
        servers
            .iter()
            .enumerate()
            .map(|(h, running)| {
                let mut config = ClientConfig::new(
                    format!("http://{}", running.addr),
                    BearerToken::new(REGISTRY_TOKEN).unwrap(),
                );
                config.timeout = Some(Duration::from_secs(120));
                (hospital(h).1, config)
            })
            .collect()
    }

    /// `FROM patients p JOIN visits_a a ON … JOIN visits_b b ON …` over the first `n`
    /// hospitals (aliases `a`, `b`, …).
    pub fn from(&self, n: usize) -> String {
        let mut sql = String::from("FROM patients p");
        for h in 0..n {
            let (_, table) = hospital(h);
            let alias = char::from(b'a' + h as u8);
            sql.push_str(&format!(" JOIN {table} {alias} ON p.email = {alias}.email"));
        }
        sql
    }

    /// The plain answer over the first `n` hospitals: for each group (the registry's region,
    /// or with `by_diagnosis_of = Some(h)` hospital `h`'s diagnosis), the patients every
    /// table holds and the sum of their costs.
    pub fn plain(&self, n: usize, by_diagnosis_of: Option<usize>) -> BTreeMap<String, (u64, u64)> {
        let key = |e: &str| e.trim().to_lowercase();
        let held: Vec<BTreeMap<String, Vec<String>>> = self.visits[..n]
            .iter()
            .map(|csv| {
                let mut by_id: BTreeMap<String, Vec<String>> = BTreeMap::new();
                for row in &csv.rows {
                    by_id.entry(key(&row[0])).or_default().push(row[1].clone());
                }
                by_id
            })
            .collect();
        let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for row in &self.patients.rows {
            let id = key(&row[0]);
            if !held.iter().all(|h| h.contains_key(&id)) {
                continue;
            }
            let cost: u64 = row[2].parse().unwrap();
            let groups: Vec<String> = match by_diagnosis_of {
                None => vec![row[1].clone()],
                Some(h) => {
                    let mut d = held[h][&id].clone();
                    d.sort();
                    d.dedup();
                    d
                }
            };
            for group in groups {
                let e = out.entry(group).or_default();
                e.0 += 1;
                e.1 += cost;
            }
        }
        out
    }
}
