//! Built-in sample data for `cleanroom demo`: a publisher's ad impressions and an advertiser's
//! purchases, generated deterministically so every run prints the same numbers.

/// A small deterministic generator (SplitMix64): sample data only, never keys.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Campaigns of the publisher's impressions.
pub const CAMPAIGNS: [&str; 4] = [
    "spring_sale",
    "summer_launch",
    "fall_promo",
    "holiday_teaser",
];
const REGIONS: [&str; 3] = ["north", "south", "west"];

/// A table as CSV would give it: header and rows of strings.
pub struct SampleTable {
    /// Column names.
    pub header: Vec<String>,
    /// Rows, one string per column.
    pub rows: Vec<Vec<String>>,
}

impl SampleTable {
    /// The table as CSV text with its header row.
    pub fn to_csv(&self) -> anyhow::Result<String> {
        // Data files, written for the members' own reading: every cell as it is.
        super::output::render_csv(&self.header, &self.rows, super::output::CsvCells::Raw)
    }
}

/// The publisher's impressions: `email, campaign, region`. People are `person{i}@example.com`
/// for i < 30 000; each saw one to three campaigns; emails carry case and whitespace noise.
/// The holiday teaser reached only a few dozen people, so thresholds suppress it.
pub fn impressions() -> SampleTable {
    let mut rng = SplitMix(0x1234_5678);
    let mut rows = Vec::new();
    for i in 0..30_000u64 {
        let seen = 1 + rng.below(3);
        for _ in 0..seen {
            let c = CAMPAIGNS[rng.below(3) as usize];
            rows.push(vec![
                noisy_email(&mut rng, i),
                c.to_owned(),
                REGIONS[rng.below(3) as usize].to_owned(),
            ]);
        }
        if i % 500 == 0 {
            rows.push(vec![
                noisy_email(&mut rng, i),
                CAMPAIGNS[3].to_owned(),
                "north".to_owned(),
            ]);
        }
    }
    SampleTable {
        header: vec!["email".into(), "campaign".into(), "region".into()],
        rows,
    }
}

/// The advertiser's purchases: `email, amount` (cents) and `channel`. Buyers are people
/// 20 000..45 000, so a third of the publisher's audience overlaps; some buy several times.
pub fn purchases() -> SampleTable {
    let mut rng = SplitMix(0x9ABC_DEF0);
    let mut rows = Vec::new();
    for i in 20_000..45_000u64 {
        let times = 1 + rng.below(2);
        for _ in 0..times {
            let amount = 500 + rng.below(20_000);
            let channel = if rng.below(4) == 0 { "store" } else { "online" };
            rows.push(vec![
                noisy_email(&mut rng, i),
                amount.to_string(),
                channel.to_owned(),
            ]);
        }
    }
    SampleTable {
        header: vec!["email".into(), "amount".into(), "channel".into()],
        rows,
    }
}

fn noisy_email(rng: &mut SplitMix, i: u64) -> String {
    match rng.below(4) {
        0 => format!("Person{i}@Example.com"),
        1 => format!("  person{i}@example.com "),
        _ => format!("person{i}@example.com"),
    }
}

/// Diagnoses of the hospitals' patients; the last is rare, so the threshold suppresses it.
pub const DIAGNOSES: [&str; 4] = ["flu", "diabetes", "asthma", "rare_disorder"];

/// Three hospitals' patients for `cleanroom demo --members 3`: hospital A's `email,
/// diagnosis, cost` (cents; the querier), hospital B's and C's `email, diagnosis`. A holds
/// people 0..6 000, B and C about 70% of people 0..8 000 each (not the same ones); a patient
/// has one diagnosis, `rare_disorder` for one in 150.
pub fn hospitals() -> [SampleTable; 3] {
    let diagnosis = |i: u64| {
        if i % 150 == 0 {
            DIAGNOSES[3]
        } else {
            DIAGNOSES[(i % 3) as usize]
        }
    };
    let mut rng = SplitMix(0x4805_9174);
    let a = SampleTable {
        header: vec!["email".into(), "diagnosis".into(), "cost".into()],
        rows: (0..6_000u64)
            .map(|i| {
                vec![
                    noisy_email(&mut rng, i),
                    diagnosis(i).to_owned(),
                    (5_000 + rng.below(200_000)).to_string(),
                ]
            })
            .collect(),
    };
    let mut other = |seed: u64| {
        let mut pick = SplitMix(seed);
        let rows = (0..8_000u64)
            .filter(|_| pick.below(10) < 7)
            .map(|i| vec![noisy_email(&mut rng, i), diagnosis(i).to_owned()])
            .collect();
        SampleTable {
            header: vec!["email".into(), "diagnosis".into()],
            rows,
        }
    };
    let b = other(0x0B0B);
    let c = other(0x0C0C);
    [a, b, c]
}
