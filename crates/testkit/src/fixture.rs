//! The end-to-end fixture: a collaboration of a publisher, an advertiser and an analyst, both
//! serving members' data as CSV files in a temporary directory, the queries the tests run, and
//! the plain answers to compare the protocol's with. The data is pseudo-random but the same on
//! every run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cleanroom_rules::{Collaboration, Value};

use crate::collaboration::{
    ADVERTISER_TOKEN, ANALYST_TOKEN, CollaborationToml, MemberToml, PUBLISHER_TOKEN,
    RETAILER_TOKEN, TableToml,
};

/// The retailer's query ([`Fixture::with_second_querier`]): buyers per campaign among its sales.
pub const RETAILER_BY_CAMPAIGN: &str = "SELECT i.campaign, COUNT(DISTINCT s.email) AS buyers \
    FROM impressions i JOIN sales s ON i.email = s.email GROUP BY i.campaign";

/// Per campaign: buyers (distinct matched emails) and revenue (sum of matched amounts).
pub const BY_CAMPAIGN: &str = "SELECT i.campaign, COUNT(DISTINCT c.email) AS buyers, \
    SUM(c.amount) AS revenue FROM impressions i JOIN conversions c ON i.email = c.email \
    GROUP BY i.campaign";

/// Per channel of the advertiser, among people the publisher reached in the EU: buyers,
/// revenue and the average amount (server-side filter, receiver-side groups).
pub const EU_BY_CHANNEL: &str = "SELECT c.channel, COUNT(DISTINCT c.email) AS buyers, \
    SUM(c.amount) AS revenue, AVG(c.amount) AS avg_amount FROM impressions i \
    JOIN conversions c ON i.email = c.email WHERE i.region = 'EU' GROUP BY c.channel";

/// A deterministic pseudo-random generator (xorshift64*), so every run sees the same data.
pub struct Rng(pub u64);

impl Rng {
    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// An email as a person might type it: random case changes and surrounding spaces.
pub fn noisy_email(rng: &mut Rng, n: u64) -> String {
    let base = format!("user{n}@example.com");
    match rng.below(4) {
        0 => base.to_uppercase(),
        1 => format!("  {base} "),
        2 => format!("User{n}@Example.COM"),
        _ => base,
    }
}

/// A CSV file as rows of strings.
pub struct Csv {
    /// The column names.
    pub header: Vec<String>,
    /// The rows, each as long as the header.
    pub rows: Vec<Vec<String>>,
}

impl Csv {
    /// Writes the file to `path`.
    pub fn write(&self, path: &Path) {
        let mut writer = csv::Writer::from_path(path).unwrap();
        writer.write_record(&self.header).unwrap();
        for row in &self.rows {
            writer.write_record(row).unwrap();
        }
        writer.flush().unwrap();
    }

    /// The position of column `name`.
    pub fn column(&self, name: &str) -> usize {
        self.header.iter().position(|h| h == name).unwrap()
    }
}

/// The publisher's impressions: ~700 rows over users 0..400. Users with n % 50 == 7 saw the
/// small "rare" campaign (and nothing else), which stays under the threshold.
pub fn impressions(rng: &mut Rng) -> Csv {
    let campaigns = ["spring", "summer", "autumn", "winter"];
    let regions = ["EU", "US", "APAC"];
    let mut rows = Vec::new();
    for _ in 0..700 {
        let n = rng.below(400);
        let campaign = if n % 50 == 7 {
            "rare"
        } else {
            campaigns[rng.below(4) as usize]
        };
        let region = regions[rng.below(3) as usize];
        rows.push(vec![
            noisy_email(rng, n),
            campaign.to_owned(),
            region.to_owned(),
        ]);
    }
    // Rows whose identifier is empty after normalization are never matched.
    rows.push(vec!["   ".to_owned(), "spring".to_owned(), "EU".to_owned()]);
    Csv {
        header: vec!["email".into(), "campaign".into(), "region".into()],
        rows,
    }
}

/// The advertiser's conversions: ~600 rows over users 200..700 with amounts.
pub fn conversions(rng: &mut Rng) -> Csv {
    let channels = ["web", "store", "app"];
    let mut rows = Vec::new();
    for _ in 0..600 {
        let n = 200 + rng.below(500);
        rows.push(vec![
            noisy_email(rng, n),
            channels[rng.below(3) as usize].to_owned(),
            (1 + rng.below(500)).to_string(),
        ]);
    }
    rows.push(vec![String::new(), "web".to_owned(), "77".to_owned()]);
    Csv {
        header: vec!["email".into(), "channel".into(), "amount".into()],
        rows,
    }
}

/// An email as the protocol matches it (trimmed, lowercase); `None` when empty.
pub fn normalize(email: &str) -> Option<String> {
    let e = email.trim().to_lowercase();
    (!e.is_empty()).then_some(e)
}

/// Everything a test needs on disk: the collaboration file and both members' data.
pub struct Fixture {
    /// The directory of the collaboration file (`collab.toml`) and the data files.
    pub dir: tempfile::TempDir,
    /// The collaboration, as loaded from `collab.toml`.
    pub collaboration: Arc<Collaboration>,
    /// The publisher's table (`impressions.csv`).
    pub impressions: Csv,
    /// The advertiser's table (`conversions.csv`).
    pub conversions: Csv,
    /// The release threshold of queries over both tables.
    pub threshold: u64,
}

impl Fixture {
    /// A fixture whose impressions table has `min_threshold = publisher_threshold`
    /// (conversions: 3; the release threshold is the larger of the two).
    pub fn new(publisher_threshold: u64) -> Fixture {
        Fixture::build(publisher_threshold, "", "")
    }

    /// [`Fixture::new`] under differential privacy: every release spends `epsilon_per_query`
    /// of each querying member's `epsilon_budget`; sums of `amount` are clamped to [0, 500].
    pub fn private(
        publisher_threshold: u64,
        epsilon_budget: f64,
        epsilon_per_query: f64,
    ) -> Fixture {
        Fixture::private_bounded(publisher_threshold, epsilon_budget, epsilon_per_query, None)
    }

    /// [`Fixture::private`] with `max_groups_per_identifier = k` (`None`: the default).
    pub fn private_bounded(
        publisher_threshold: u64,
        epsilon_budget: f64,
        epsilon_per_query: f64,
        k: Option<u32>,
    ) -> Fixture {
        let mut privacy = format!(
            "[collaboration.privacy]\nepsilon_budget = {epsilon_budget:?}\n\
             epsilon_per_query = {epsilon_per_query:?}\n"
        );
        if let Some(k) = k {
            privacy.push_str(&format!("max_groups_per_identifier = {k}\n"));
        }
        Fixture::build(
            publisher_threshold,
            &privacy,
            "sum_bounds = { amount = [0, 500] }",
        )
    }

    fn build(publisher_threshold: u64, privacy: &str, sum_bounds: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let mut conversions_table =
            TableToml::aggregation("conversions", "advertiser", &["email", "channel", "amount"])
                .dimensions(&["channel"])
                .aggregates(r#"email = ["COUNT_DISTINCT"], amount = ["SUM", "AVG"]"#);
        if !sum_bounds.is_empty() {
            conversions_table = conversions_table.rule_line(sum_bounds);
        }
        let toml = CollaborationToml::new("e2e-collaboration")
            .name("End-to-end tests")
            .header(privacy)
            .member(MemberToml::new("publisher", PUBLISHER_TOKEN))
            .member(MemberToml::querier("advertiser", ADVERTISER_TOKEN))
            .member(MemberToml::new("analyst", ANALYST_TOKEN).abilities(&["receive_results"]))
            .table(
                TableToml::aggregation(
                    "impressions",
                    "publisher",
                    &["email", "campaign", "region"],
                )
                .dimensions(&["campaign", "region"])
                .min_threshold(publisher_threshold),
            )
            .table(conversions_table)
            .table(
                TableToml::aggregation("panel", "analyst", &["email", "segment"])
                    .dimensions(&["segment"]),
            )
            .render();
        std::fs::write(dir.path().join("collab.toml"), toml).unwrap();
        let collaboration = Arc::new(Collaboration::load(dir.path().join("collab.toml")).unwrap());
        let mut rng = Rng(0x5EED_1234_ABCD_0001);
        let impressions = impressions(&mut rng);
        let conversions = conversions(&mut rng);
        impressions.write(&dir.path().join("impressions.csv"));
        conversions.write(&dir.path().join("conversions.csv"));
        Fixture {
            dir,
            collaboration,
            impressions,
            conversions,
            threshold: publisher_threshold.max(3),
        }
    }

    /// The path of `name` in the fixture's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The fixture with its collaboration file rewritten by `edit` (and reloaded); the data
    /// files stay.
    pub fn edited(mut self, edit: impl FnOnce(String) -> String) -> Fixture {
        let path = self.path("collab.toml");
        let toml = edit(std::fs::read_to_string(&path).unwrap());
        std::fs::write(&path, toml).unwrap();
        self.collaboration = Arc::new(Collaboration::load(&path).unwrap());
        self
    }

    /// The fixture where the analyst (a receiver of results) has a `result_key`, whose
    /// opening half is returned; unless `advertiser_receives`, the advertiser may query but
    /// not receive results.
    pub fn with_analyst_key(
        self,
        advertiser_receives: bool,
    ) -> (Fixture, cleanroom_psi::sealed::OpeningKey) {
        let key = cleanroom_psi::sealed::OpeningKey::generate();
        let public = hex::encode(key.sealing_key().to_bytes());
        let fx = self.edited(|toml| {
            let analyst = "name = \"analyst\"\nabilities = [\"receive_results\"]\n";
            assert!(toml.contains(analyst), "the fixture's analyst entry");
            let mut edited =
                toml.replace(analyst, &format!("{analyst}result_key = \"{public}\"\n"));
            if !advertiser_receives {
                let advertiser =
                    "name = \"advertiser\"\nabilities = [\"query\", \"receive_results\"]";
                assert!(
                    edited.contains(advertiser),
                    "the fixture's advertiser entry"
                );
                edited =
                    edited.replace(advertiser, "name = \"advertiser\"\nabilities = [\"query\"]");
            }
            edited
        });
        (fx, key)
    }

    /// The fixture as collaboration `id` (another collaboration with the same members, tables
    /// and data).
    pub fn with_id(self, id: &str) -> Fixture {
        self.edited(|toml| toml.replace(r#"id = "e2e-collaboration""#, &format!("id = {id:?}")))
    }

    /// The fixture with a second querying member, `retailer` (token [`RETAILER_TOKEN`]), whose
    /// table `sales` holds the same rows as `conversions`.
    pub fn with_second_querier(self) -> Fixture {
        std::fs::copy(self.path("conversions.csv"), self.path("sales.csv")).unwrap();
        let retailer = MemberToml::querier("retailer", RETAILER_TOKEN);
        let sales = TableToml::aggregation("sales", "retailer", &["email", "channel", "amount"])
            .dimensions(&["channel"]);
        self.edited(|toml| format!("{toml}\n{}\n{}", retailer.render(), sales.render()))
    }

    /// The advertiser's tables: `conversions`, from the fixture's file.
    pub fn advertiser_data(&self) -> BTreeMap<String, cleanroom_data::TableSpec> {
        BTreeMap::from([(
            "conversions".to_owned(),
            self.path("conversions.csv").into(),
        )])
    }

    /// Distinct normalized emails of impressions rows that pass `keep`, per `key`.
    pub fn publisher_sets(
        &self,
        keep: impl Fn(&[String]) -> bool,
        key: impl Fn(&[String]) -> String,
    ) -> BTreeMap<String, BTreeSet<String>> {
        let email = self.impressions.column("email");
        let mut sets: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for row in self.impressions.rows.iter().filter(|r| keep(r)) {
            if let Some(e) = normalize(&row[email]) {
                sets.entry(key(row)).or_default().insert(e);
            }
        }
        sets
    }

    /// The plain answer to [`BY_CAMPAIGN`]: released rows (campaign order) and suppressed
    /// count.
    pub fn plain_by_campaign(&self) -> (Vec<Vec<Value>>, u64) {
        let campaign = self.impressions.column("campaign");
        let sets = self.publisher_sets(|_| true, |r| r[campaign].clone());
        let (email, amount) = (
            self.conversions.column("email"),
            self.conversions.column("amount"),
        );
        let mut rows = Vec::new();
        let mut suppressed = 0;
        for (campaign, set) in &sets {
            let mut buyers = BTreeSet::new();
            let mut revenue = 0u64;
            for row in &self.conversions.rows {
                if let Some(e) = normalize(&row[email])
                    && set.contains(&e)
                {
                    revenue += row[amount].parse::<u64>().unwrap();
                    buyers.insert(e);
                }
            }
            // Every announced pair that is not released counts as suppressed, matched or not.
            let buyers = buyers.len() as u64;
            if buyers >= self.threshold {
                rows.push(vec![
                    Value::Text(campaign.clone()),
                    Value::Integer(buyers),
                    Value::Integer(revenue),
                ]);
            } else {
                suppressed += 1;
            }
        }
        (rows, suppressed)
    }

    /// The plain answer to [`EU_BY_CHANNEL`] (rows, and pairs not released).
    pub fn plain_eu_by_channel(&self) -> (Vec<Vec<Value>>, u64) {
        let region = self.impressions.column("region");
        let eu = self
            .publisher_sets(|r| r[region] == "EU", |_| String::new())
            .remove("")
            .unwrap_or_default();
        let (email, channel, amount) = (
            self.conversions.column("email"),
            self.conversions.column("channel"),
            self.conversions.column("amount"),
        );
        // Every channel of the advertiser's rows is an announced group, matched or not.
        let mut per_channel: BTreeMap<String, (BTreeSet<String>, u64, u64)> = BTreeMap::new();
        for row in &self.conversions.rows {
            if normalize(&row[email]).is_some() {
                per_channel.entry(row[channel].clone()).or_default();
            }
        }
        for row in &self.conversions.rows {
            if let Some(e) = normalize(&row[email])
                && eu.contains(&e)
            {
                let entry = per_channel.entry(row[channel].clone()).or_default();
                entry.0.insert(e);
                entry.1 += row[amount].parse::<u64>().unwrap();
                entry.2 += 1;
            }
        }
        let mut rows = Vec::new();
        let mut suppressed = 0;
        for (channel, (buyers, revenue, matched_rows)) in per_channel {
            let buyers = buyers.len() as u64;
            if buyers >= self.threshold {
                rows.push(vec![
                    Value::Text(channel),
                    Value::Integer(buyers),
                    Value::Integer(revenue),
                    Value::Float(revenue as f64 / matched_rows as f64),
                ]);
            } else {
                suppressed += 1;
            }
        }
        (rows, suppressed)
    }
}
