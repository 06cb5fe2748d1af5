//! Loading collaboration files: the sample loads, and every mistake names its key and line.

use cleanroom_psi::Normalization;
use cleanroom_rules::{
    Ability, AggregateFunction, AnalysisRule, Collaboration, CollaborationError, Problem,
};

const SAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/collab.toml");

/// A minimal valid file; tests replace one line to introduce one mistake.
const BASE: &str = r#"[collaboration]
id = "c1"

[[member]]
name = "publisher"
abilities = []
token_sha256 = "3a19586cc6dba3dbd62e94aec56bbd3fe729f5464f2a72df28ada62101059e3f"

[[member]]
name = "advertiser"
abilities = ["query", "receive_results"]
token_sha256 = "414eb4cbdada9c62b0fd994eacd4ae564ea18cfe142c15df6ff5331210e26955"

[[table]]
name = "impressions"
owner = "publisher"
columns = ["email", "campaign", "region"]
identifier = { column = "email", normalize = "email" }

[table.rule]
type = "aggregation"
join_columns = ["email"]
dimension_columns = ["campaign", "region"]
aggregate_columns = { email = ["COUNT_DISTINCT"] }
min_threshold = 100
"#;

/// `BASE` with line `line` (1-based) replaced by `text`.
fn with_line(line: usize, text: &str) -> String {
    let mut lines: Vec<&str> = BASE.lines().collect();
    lines[line - 1] = text;
    lines.join("\n") + "\n"
}

fn invalid(text: &str) -> (usize, String, Problem) {
    match Collaboration::from_toml_str(text, "test.toml") {
        Err(CollaborationError::Invalid {
            origin,
            line,
            key,
            problem,
        }) => {
            assert_eq!(origin, "test.toml");
            (line, key, problem)
        }
        other => panic!("expected a validation error, got {other:?}"),
    }
}

#[test]
fn the_sample_loads_with_everything_in_place() {
    let c = Collaboration::load(SAMPLE).unwrap();
    assert_eq!(c.id(), "acme-newsco-q4");
    assert_eq!(c.name(), "ACME x NewsCo Q4 campaign measurement");
    let names: Vec<&str> = c.members().iter().map(|m| m.name()).collect();
    assert_eq!(names, ["publisher", "advertiser", "analyst", "retailer"]);
    let advertiser = c.member("advertiser").unwrap();
    assert!(advertiser.can(Ability::Query) && advertiser.can(Ability::ReceiveResults));
    assert!(!c.member("publisher").unwrap().can(Ability::Query));
    assert_eq!(
        c.member("analyst").unwrap().abilities().collect::<Vec<_>>(),
        [Ability::Query]
    );
    assert_eq!(c.tables().len(), 7);
    let impressions = c.table("impressions").unwrap();
    assert_eq!(impressions.owner(), "publisher");
    assert_eq!(impressions.identifier().column(), "email");
    assert_eq!(
        impressions.identifier().normalization(),
        Normalization::Email
    );
    let AnalysisRule::Aggregation(rule) = impressions.rule() else {
        panic!("aggregation rule expected");
    };
    assert_eq!(rule.min_threshold(), 3);
    assert_eq!(rule.dimension_columns(), ["campaign", "region", "device"]);
    assert!(rule.allows(AggregateFunction::CountDistinct, "email"));
    assert!(!rule.allows(AggregateFunction::Count, "email"));
    assert!(matches!(
        c.table("subscribers").unwrap().rule(),
        AnalysisRule::List(_)
    ));
    assert_eq!(
        c.tables_of("advertiser")
            .map(|t| t.name())
            .collect::<Vec<_>>(),
        ["conversions", "loyalty", "customers"]
    );
    assert!(c.member("Advertiser").is_none());
}

#[test]
fn tokens_are_checked_against_their_sha256() {
    let c = Collaboration::load(SAMPLE).unwrap();
    let advertiser = c.member("advertiser").unwrap();
    assert!(advertiser.token_matches("advertiser-token"));
    assert!(!advertiser.token_matches("advertiser-token "));
    assert!(!advertiser.token_matches("publisher-token"));
    assert!(!advertiser.token_matches(""));
    // The retailer's hash is written in upper case.
    assert!(
        c.member("retailer")
            .unwrap()
            .token_matches("retailer-token")
    );
    assert_eq!(
        c.authenticate("publisher-token").unwrap().name(),
        "publisher"
    );
    assert!(c.authenticate("guess").is_none());
    // The hash never shows up in debug output.
    assert!(!format!("{advertiser:?}").contains("414eb4"));
}

#[test]
fn the_base_file_is_valid() {
    let c = Collaboration::from_toml_str(BASE, "base").unwrap();
    assert_eq!(c.name(), "c1", "the name defaults to the id");
}

#[test]
fn an_unknown_owner_is_named_with_its_line() {
    let (line, key, problem) = invalid(&with_line(16, r#"owner = "publsher""#));
    assert_eq!((line, key.as_str()), (16, "table.owner"));
    assert_eq!(problem, Problem::UnknownOwner("publsher".into()));
}

#[test]
fn a_rule_column_must_be_a_table_column() {
    let (line, key, problem) = invalid(&with_line(
        23,
        r#"dimension_columns = ["campaign", "country"]"#,
    ));
    assert_eq!((line, key.as_str()), (23, "table.rule.dimension_columns"));
    assert_eq!(
        problem,
        Problem::UnknownColumn {
            table: "impressions".into(),
            column: "country".into()
        }
    );
    let (line, key, _) = invalid(&with_line(22, r#"join_columns = ["mail"]"#));
    assert_eq!((line, key.as_str()), (22, "table.rule.join_columns"));
    let (line, key, _) = invalid(&with_line(24, r#"aggregate_columns = { id = ["COUNT"] }"#));
    assert_eq!(
        (line, key.as_str()),
        (24, "table.rule.aggregate_columns.id")
    );
    let (line, key, _) = invalid(&with_line(
        18,
        r#"identifier = { column = "phone", normalize = "email" }"#,
    ));
    assert_eq!((line, key.as_str()), (18, "table.identifier.column"));
}

#[test]
fn thresholds_must_be_in_range() {
    for (value, ok) in [
        ("1", false),
        ("2", true),
        ("100000", true),
        ("100001", false),
        ("-5", false),
    ] {
        let text = with_line(25, &format!("min_threshold = {value}"));
        match Collaboration::from_toml_str(&text, "t") {
            Ok(_) => assert!(ok, "{value} accepted"),
            Err(e) => {
                assert!(!ok, "{value} refused: {e}");
                assert_eq!(e.line(), Some(25));
                assert_eq!(
                    e.problem(),
                    Some(&Problem::ThresholdOutOfRange(value.parse().unwrap()))
                );
                assert!(e.to_string().starts_with("t:25: table.rule.min_threshold:"));
            }
        }
    }
}

#[test]
fn token_hashes_must_be_unique_in_any_case() {
    // The advertiser's token hash replaced by the publisher's, in upper case.
    let advertiser = "414eb4cbdada9c62b0fd994eacd4ae564ea18cfe142c15df6ff5331210e26955";
    let line = 1 + BASE.lines().position(|l| l.contains(advertiser)).unwrap();
    let shared = BASE.replace(
        advertiser,
        "3A19586CC6DBA3DBD62E94AEC56BBD3FE729F5464F2A72DF28ADA62101059E3F",
    );
    let (at, key, problem) = invalid(&shared);
    assert_eq!((at, key.as_str()), (line, "member.token_sha256"));
    assert_eq!(problem, Problem::DuplicateTokenHash("publisher".into()));
}

#[test]
fn client_certificate_pins_are_checked_and_unique_in_any_case() {
    let pin = "aa".repeat(32);
    // Line 7 is the publisher's token line, line 12 the advertiser's: pin after each.
    let pinned = |publisher: &str, advertiser: &str| {
        let mut lines: Vec<String> = BASE.lines().map(str::to_owned).collect();
        lines[11] = format!("{}\nclient_cert_sha256 = \"{advertiser}\"", lines[11]);
        lines[6] = format!("{}\nclient_cert_sha256 = \"{publisher}\"", lines[6]);
        lines.join("\n") + "\n"
    };
    let ok = Collaboration::from_toml_str(&pinned(&"bb".repeat(32), &pin), "t").unwrap();
    assert_eq!(
        ok.member("advertiser").unwrap().client_cert_sha256(),
        Some(&[0xaa; 32])
    );
    assert_eq!(
        Collaboration::from_toml_str(BASE, "t")
            .unwrap()
            .member("advertiser")
            .unwrap()
            .client_cert_sha256(),
        None
    );
    let (line, key, problem) = invalid(&pinned(&pin, &pin.to_uppercase()));
    assert_eq!((line, key.as_str()), (14, "member.client_cert_sha256"));
    assert_eq!(problem, Problem::DuplicateCertificate("publisher".into()));
    let (line, key, problem) = invalid(&pinned("not hex", &pin));
    assert_eq!((line, key.as_str()), (8, "member.client_cert_sha256"));
    assert_eq!(problem, Problem::BadCertificateHash);
}

#[test]
fn a_members_row_quota_defaults_and_is_checked() {
    let base = Collaboration::from_toml_str(BASE, "t").unwrap();
    let advertiser = base.member("advertiser").unwrap();
    assert_eq!(
        advertiser.max_rows_per_session(),
        cleanroom_rules::DEFAULT_MEMBER_ROWS_PER_SESSION
    );
    // Line 12 is the advertiser's token line: add the quota after it.
    let with_quota = |value: &str| {
        with_line(
            12,
            &format!(
                "token_sha256 = \"414eb4cbdada9c62b0fd994eacd4ae564ea18cfe142c15df6ff5331210e26955\"\nmax_rows_per_session = {value}"
            ),
        )
    };
    let set = Collaboration::from_toml_str(&with_quota("250000"), "t").unwrap();
    assert_eq!(
        set.member("advertiser").unwrap().max_rows_per_session(),
        250_000
    );
    for bad in ["0", "-1", "1000000001"] {
        let (line, key, problem) = invalid(&with_quota(bad));
        assert_eq!((line, key.as_str()), (13, "member.max_rows_per_session"));
        assert_eq!(problem, Problem::BadMemberRows(bad.parse().unwrap()));
    }
}

#[test]
fn names_must_be_unique() {
    let (line, key, problem) = invalid(&with_line(10, r#"name = "publisher""#));
    assert_eq!((line, key.as_str()), (10, "member.name"));
    assert_eq!(problem, Problem::DuplicateMember("publisher".into()));

    let twice = format!("{BASE}\n{}", &BASE[BASE.find("[[table]]").unwrap()..]);
    let (line, key, problem) = invalid(&twice);
    assert_eq!((line, key.as_str()), (28, "table.name"));
    assert_eq!(problem, Problem::DuplicateTable("impressions".into()));

    let (_, key, problem) = invalid(&with_line(17, r#"columns = ["email", "region", "region"]"#));
    assert_eq!(key, "table.columns");
    assert_eq!(problem, Problem::DuplicateColumn("region".into()));
}

#[test]
fn a_table_without_a_rule_is_refused() {
    let end = BASE.find("[table.rule]").unwrap();
    let (line, key, problem) = invalid(&BASE[..end]);
    assert_eq!((line, key.as_str()), (15, "table"));
    assert_eq!(problem, Problem::MissingRule("impressions".into()));
}

#[test]
fn abilities_tokens_and_normalizations_are_checked() {
    let (line, key, problem) = invalid(&with_line(11, r#"abilities = ["query", "admin"]"#));
    assert_eq!((line, key.as_str()), (11, "member.abilities"));
    assert_eq!(problem, Problem::UnknownAbility("admin".into()));

    let (line, key, problem) = invalid(&with_line(12, r#"token_sha256 = "abc""#));
    assert_eq!((line, key.as_str()), (12, "member.token_sha256"));
    assert_eq!(problem, Problem::BadTokenHash);
    let not_hex = format!("token_sha256 = \"{}\"", "zz".repeat(32));
    assert_eq!(invalid(&with_line(12, &not_hex)).2, Problem::BadTokenHash);

    let (line, key, problem) = invalid(&with_line(
        18,
        r#"identifier = { column = "email", normalize = "lowercase" }"#,
    ));
    assert_eq!((line, key.as_str()), (18, "table.identifier.normalize"));
    assert_eq!(problem, Problem::UnknownNormalization("lowercase".into()));
}

#[test]
fn rules_are_checked_by_type() {
    let (line, key, problem) = invalid(&with_line(21, r#"type = "custom""#));
    assert_eq!((line, key.as_str()), (21, "table.rule.type"));
    assert_eq!(problem, Problem::UnknownRuleType("custom".into()));

    let (line, _, problem) = invalid(&with_line(
        24,
        r#"aggregate_columns = { email = ["MEDIAN"] }"#,
    ));
    assert_eq!(line, 24);
    assert_eq!(problem, Problem::UnknownAggregate("MEDIAN".into()));

    let (_, _, problem) = invalid(&with_line(
        23,
        r#"dimension_columns = ["campaign", "email"]"#,
    ));
    assert_eq!(problem, Problem::JoinDimensionOverlap("email".into()));

    let (line, key, problem) = invalid(&with_line(25, ""));
    assert_eq!((line, key.as_str()), (21, "table.rule.min_threshold"));
    assert_eq!(
        problem,
        Problem::MissingRuleKey {
            key: "min_threshold",
            rule_type: "aggregation"
        }
    );

    // A list rule must not carry aggregation keys.
    let list = with_line(21, r#"type = "list""#);
    let (line, key, problem) = invalid(&list);
    assert_eq!((line, key.as_str()), (23, "table.rule.dimension_columns"));
    assert_eq!(problem, Problem::KeyNotInRule { rule_type: "list" });
}

#[test]
fn shape_and_syntax_errors_carry_the_line() {
    let typo = with_line(25, "min_treshold = 100");
    let e = Collaboration::from_toml_str(&typo, "t.toml").unwrap_err();
    assert!(
        matches!(e, CollaborationError::Toml { line: 25, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("min_treshold"), "{e}");

    let broken = with_line(7, "token_sha256 = \"unterminated");
    let e = Collaboration::from_toml_str(&broken, "t.toml").unwrap_err();
    assert!(matches!(e, CollaborationError::Toml { line: 7, .. }), "{e}");

    let wrong_type = with_line(25, "min_threshold = \"100\"");
    let e = Collaboration::from_toml_str(&wrong_type, "t.toml").unwrap_err();
    assert!(
        matches!(e, CollaborationError::Toml { line: 25, .. }),
        "{e}"
    );

    let e = Collaboration::from_toml_str("", "empty.toml").unwrap_err();
    assert!(e.to_string().contains("collaboration"), "{e}");

    let e = Collaboration::load("/nonexistent/collab.toml").unwrap_err();
    assert!(matches!(e, CollaborationError::Read { .. }));
    assert!(e.to_string().contains("/nonexistent/collab.toml"));
}

/// `BASE` with `lines` added to its `[collaboration]` section (after line 2).
fn with_header(lines: &str) -> String {
    BASE.replacen("id = \"c1\"\n", &format!("id = \"c1\"\n{lines}\n"), 1)
}

#[test]
fn the_payer_defaults_to_the_querier_and_must_be_a_member() {
    let none = Collaboration::from_toml_str(BASE, "test.toml").unwrap();
    assert_eq!(none.payer(), None);
    assert_eq!(none.payer_of("advertiser"), "advertiser");
    assert_eq!(none.pricing(), None);

    let paid = Collaboration::from_toml_str(&with_header(r#"payer = "publisher""#), "t").unwrap();
    assert_eq!(paid.payer(), Some("publisher"));
    assert_eq!(paid.payer_of("advertiser"), "publisher");

    let (line, key, problem) = invalid(&with_header("\npayer = \"agency\""));
    assert_eq!((line, key.as_str()), (4, "collaboration.payer"));
    assert_eq!(problem, Problem::UnknownPayer("agency".into()));
}

#[test]
fn pricing_is_read_and_prices_work_by_hand() {
    let collaboration = Collaboration::from_toml_str(
        &with_header(
            "[collaboration.pricing]\ncurrency = \"EUR\"\nper_million_rows = 2.0\n\
             per_gib = 0.10\nper_cpu_hour = 5",
        ),
        "test.toml",
    )
    .unwrap();
    let pricing = collaboration.pricing().unwrap();
    assert_eq!(pricing.currency(), "EUR");
    assert_eq!(pricing.per_million_rows(), Some(2.0));
    assert_eq!(pricing.per_gib(), Some(0.10));
    assert_eq!(pricing.per_cpu_hour(), Some(5.0));
    // 3 million rows, 2 GiB and 720 s (a fifth of an hour): 6 + 0.2 + 1.
    let price = pricing.price(3_000_000, 2 << 30, 720.0);
    assert!((price - 7.2).abs() < 1e-12, "{price}");

    let rows_only = Collaboration::from_toml_str(
        &with_header("[collaboration.pricing]\ncurrency = \"USD\"\nper_million_rows = 0"),
        "test.toml",
    )
    .unwrap();
    let pricing = rows_only.pricing().unwrap();
    assert_eq!((pricing.per_gib(), pricing.per_cpu_hour()), (None, None));
    assert_eq!(pricing.price(5_000_000, 1 << 40, 1e6), 0.0);
}

#[test]
fn pricing_mistakes_are_named_with_key_and_line() {
    let section = |body: &str| with_header(&format!("[collaboration.pricing]\n{body}"));
    let cases: [(&str, usize, &str, Problem); 6] = [
        (
            "currency = \"eur\"\nper_gib = 1.0",
            4,
            "collaboration.pricing.currency",
            Problem::BadCurrency("eur".into()),
        ),
        (
            "currency = \"EURO\"\nper_gib = 1.0",
            4,
            "collaboration.pricing.currency",
            Problem::BadCurrency("EURO".into()),
        ),
        (
            "currency = \"EUR\"\nper_gib = -0.5",
            5,
            "collaboration.pricing.per_gib",
            Problem::BadPrice("-0.5".into()),
        ),
        (
            "currency = \"EUR\"\nper_million_rows = nan",
            5,
            "collaboration.pricing.per_million_rows",
            Problem::BadPrice("NaN".into()),
        ),
        (
            "currency = \"EUR\"\nper_cpu_hour = inf",
            5,
            "collaboration.pricing.per_cpu_hour",
            Problem::BadPrice("inf".into()),
        ),
        (
            "currency = \"EUR\"",
            3,
            "collaboration.pricing",
            Problem::NoPrice,
        ),
    ];
    for (body, want_line, want_key, want_problem) in cases {
        let (line, key, problem) = invalid(&section(body));
        assert_eq!(
            (line, key.as_str(), problem),
            (want_line, want_key, want_problem),
            "{body}"
        );
    }
    // The currency is required, and no other key is allowed.
    for body in [
        "per_gib = 1.0",
        "currency = \"EUR\"\nper_gib = 1.0\nper_query = 3.0",
    ] {
        match Collaboration::from_toml_str(&section(body), "test.toml") {
            Err(CollaborationError::Toml { message, .. }) => {
                assert!(
                    message.contains("currency") || message.contains("per_query"),
                    "{message}"
                );
            }
            other => panic!("expected a TOML error for {body:?}, got {other:?}"),
        }
    }
}

#[test]
fn relay_keys_are_read_and_checked_like_result_keys() {
    let key = cleanroom_psi::sealed::OpeningKey::generate().sealing_key();
    let publisher_token =
        "token_sha256 = \"3a19586cc6dba3dbd62e94aec56bbd3fe729f5464f2a72df28ada62101059e3f\"";
    let with_key = |entry: &str| with_line(7, &format!("{publisher_token}\n{entry}"));

    let c = Collaboration::from_toml_str(
        &with_key(&format!("relay_key = \"{}\"", hex::encode(key.to_bytes()))),
        "test.toml",
    )
    .unwrap();
    assert_eq!(c.member("publisher").unwrap().relay_key(), Some(&key));
    assert_eq!(c.member("advertiser").unwrap().relay_key(), None);
    assert!(c.member("publisher").unwrap().result_key().is_none());

    for bad in ["abcd", &"zz".repeat(32), &"00".repeat(31), &"ff".repeat(32)] {
        let (line, key, problem) = invalid(&with_key(&format!("relay_key = \"{bad}\"")));
        assert_eq!((line, key.as_str()), (8, "member.relay_key"), "{bad}");
        assert!(
            matches!(problem, Problem::BadRelayKey),
            "{bad}: {problem:?}"
        );
    }
    let (_, key, problem) = invalid(&with_key("result_key = \"abcd\""));
    assert_eq!(key, "member.result_key");
    assert!(matches!(problem, Problem::BadResultKey));
}
