use std::collections::HashMap;
use std::time::Duration;

use super::*;

const VALID: &str = r#"
    [apps.wx0123456789abcdef]
    secret = "s3cret"
    [api_keys.a]
    key = "0123456789abcdef0123"
    apps = "wx0123456789abcdef"
    scopes = "collect, send"
"#;

fn from_toml(text: &str) -> anyhow::Result<Settings> {
    Settings::from_toml(text, HashMap::new())
}

fn with_env(text: &str, variables: &[(&str, &str)]) -> anyhow::Result<Settings> {
    let environment = variables
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
    Settings::from_toml(text, environment)
}

fn error_of(result: anyhow::Result<Settings>) -> String {
    format!(
        "{:#}",
        result.expect_err("the configuration must be refused")
    )
}

#[test]
fn the_example_file_is_valid() {
    let text = std::fs::read_to_string("formid-gateway.example.toml").unwrap();
    let settings = from_toml(&text).unwrap();
    assert_eq!(settings.apps.len(), 1);
    assert_eq!(settings.api_keys.len(), 3);
}

#[test]
fn defaults_fill_what_is_left_out_and_csv_lists_parse() {
    let settings = from_toml(VALID).unwrap();
    assert_eq!(settings.database_url, "sqlite://data/formid-gateway.db");
    assert_eq!(settings.wechat.base_url, "https://api.weixin.qq.com");
    assert_eq!(
        settings.api_keys["a"].parsed_scopes().unwrap(),
        vec![Scope::Collect, Scope::Send]
    );
}

#[test]
fn integer_keys_become_durations_once() {
    let text = format!(
        "[ledger]\nlease_secs = 200\nwaiting_poll_ms = 250\nidempotency_retention_hours = 48\n\
         credential_retention_days = 2\n[tokens]\ncache_ms = 0\n{VALID}"
    );
    let settings = from_toml(&text).unwrap();
    assert_eq!(settings.ledger.lease, Duration::from_secs(200));
    assert_eq!(settings.ledger.waiting_poll, Duration::from_millis(250));
    assert_eq!(
        settings.ledger.idempotency_retention,
        Duration::from_secs(48 * 3600)
    );
    assert_eq!(
        settings.ledger.credential_retention,
        Duration::from_secs(2 * 86_400)
    );
    assert_eq!(settings.tokens.cache, Duration::ZERO);
    let defaults = from_toml(VALID).unwrap();
    assert_eq!(defaults.tokens.fetch_burst, 5);
    assert_eq!(defaults.tokens.fetch_refill, Duration::from_secs(120));
    assert_eq!(defaults.tokens.check_reuse, Duration::from_secs(10));
    assert_eq!(defaults.tokens.send_retry, Duration::from_secs(5));
    assert_eq!(defaults.ledger.sweep_interval, Duration::from_secs(300));
    // The same keys from the environment, as digit strings.
    let settings = with_env(
        VALID,
        &[
            ("FORMID__LEDGER__LEASE_SECS", "200"),
            ("FORMID__TOKENS__CACHE_MS", " 7 "),
        ],
    )
    .unwrap();
    assert_eq!(settings.ledger.lease, Duration::from_secs(200));
    assert_eq!(settings.tokens.cache, Duration::from_millis(7));
}

#[test]
fn environment_strings_stay_byte_for_byte() {
    let cases = [
        "00001234567890123456",
        "12345678901234567890",
        "1234567890123456789012345",
        "0000000000000000.5000",
    ];
    for key in cases {
        let settings = with_env(VALID, &[("FORMID__API_KEYS__A__KEY", key)]).unwrap();
        assert_eq!(settings.api_keys["a"].key.expose_secret(), key);
    }
    for secret in [
        "0012345678",
        "true",
        "1e5",
        "  spaced secret\t",
        "-0",
        "0x10",
    ] {
        let settings = with_env(
            VALID,
            &[("FORMID__APPS__WX0123456789ABCDEF__SECRET", secret)],
        )
        .unwrap();
        assert_eq!(
            settings.apps["wx0123456789abcdef"].secret.expose_secret(),
            secret
        );
    }
    let settings = with_env(VALID, &[("FORMID__INSTANCE_ID", "007")]).unwrap();
    assert_eq!(settings.instance_id.as_deref(), Some("007"));
    let settings = with_env(VALID, &[("FORMID__API_KEYS__A__SCOPES", "true")]);
    assert!(error_of(settings).contains("\"true\""));
}

#[test]
fn numbers_are_whole_numbers_and_nothing_else() {
    for (variable, value) in [
        ("FORMID__LEDGER__MAX_BATCH", "1.5"),
        ("FORMID__LEDGER__MAX_BATCH", "1e5"),
        ("FORMID__LEDGER__MAX_BATCH", "true"),
        ("FORMID__LEDGER__MAX_BATCH", "yes"),
        ("FORMID__LEDGER__MAX_BATCH", "-3"),
        ("FORMID__LEDGER__MAX_BATCH", ""),
        ("FORMID__TOKENS__CACHE_MS", "-1"),
    ] {
        let error = error_of(with_env(VALID, &[(variable, value)]));
        assert!(
            error.contains("whole number"),
            "{variable}={value}: {error}"
        );
    }
    for text in [
        "[ledger]\nmax_batch = 1.5",
        "[ledger]\nmax_batch = 2.0",
        "[ledger]\nmax_batch = true",
        "[tokens]\ncache_ms = -5",
        "[ledger]\nlease_secs = \"2 minutes\"",
    ] {
        let error = error_of(from_toml(&format!("{text}\n{VALID}")));
        assert!(error.contains("whole number"), "{text}: {error}");
        let key = text.lines().nth(1).unwrap().split(' ').next().unwrap();
        assert!(error.contains(key), "{text}: {error}");
    }
    let settings = with_env(VALID, &[("FORMID__LEDGER__MAX_BATCH", "0010")]).unwrap();
    assert_eq!(settings.ledger.max_batch, 10);
}

#[test]
fn unknown_keys_stop_the_process_naming_the_nearest_one() {
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: [Case; 7] = [
        (
            "databse_url = \"sqlite://x.db\"",
            &[],
            &["`databse_url`", "configuration file", "`database_url`"],
        ),
        (
            "",
            &[("FORMID__DATABSE_URL", "sqlite://x.db")],
            &["`databse_url`", "FORMID__DATABSE_URL", "`database_url`"],
        ),
        (
            "",
            &[("FORMID__LEDGER__MAX_BACTH", "5")],
            &[
                "`ledger.max_bacth`",
                "FORMID__LEDGER__MAX_BACTH",
                "`ledger.max_batch`",
            ],
        ),
        (
            "[wechat]\nrequest_timeout = 5",
            &[],
            &["`wechat.request_timeout`", "`wechat.request_timeout_ms`"],
        ),
        (
            "[apps.wx0123456789abcdef]\nsecrte = \"x\"\nsecret = \"y\"",
            &[],
            &[
                "`apps.wx0123456789abcdef.secrte`",
                "`apps.wx0123456789abcdef.secret`",
            ],
        ),
        (
            "",
            &[("FORMID__API_KEYS__A__SCOPE", "send")],
            &["`api_keys.a.scope`", "`api_keys.a.scopes`"],
        ),
        ("[ledgr]\nmax_batch = 5", &[], &["`ledgr`", "`ledger`"]),
    ];
    for (text, variables, expected) in cases {
        // Sections of the file appear once: a case's section replaces VALID's.
        let text = if text.starts_with("[apps.") {
            format!("{text}\n[api_keys.a]\nkey = \"0123456789abcdef0123\"\napps = \"*\"\nscopes = \"send\"")
        } else {
            format!("{text}\n{VALID}")
        };
        let error = error_of(with_env(&text, variables));
        for fragment in expected {
            assert!(error.contains(fragment), "{fragment} in: {error}");
        }
    }
    // Map sections have free keys: a new app and a new key name are fine.
    let settings = with_env(
        VALID,
        &[
            ("FORMID__APPS__WXNEWAPP00000001__SECRET", "s"),
            ("FORMID__API_KEYS__BILLING__KEY", "billing-key-0123456789"),
            ("FORMID__API_KEYS__BILLING__APPS", "*"),
            ("FORMID__API_KEYS__BILLING__SCOPES", "send"),
        ],
    )
    .unwrap();
    assert_eq!(settings.apps.len(), 2);
    assert_eq!(settings.api_keys.len(), 2);
}

#[test]
fn invalid_settings_say_what_is_wrong() {
    let cases = [
        ("listen = \"nowhere\"", "listen"),
        ("database_url = \"mysql://x\"", "database_url"),
        ("database_url = \"sqlite:\"", "needs a file path"),
        ("database_url = \"sqlite://\"", "needs a file path"),
        ("database_url = \"sqlite::memory:\"", "in-memory"),
        ("database_url = \"sqlite://x.db?mode=memory\"", "in-memory"),
        (
            "database_max_connections = 0",
            "database_max_connections: 0 is out of range; allowed is 1 to",
        ),
        ("[wechat]\nbase_url = \"ftp://x\"", "base_url"),
        (
            "[wechat]\nbreaker_failure_threshold = 0",
            "wechat.breaker_failure_threshold: 0 is out of range; allowed is 1",
        ),
        (
            "[wechat]\nconnect_timeout_ms = 0",
            "wechat.connect_timeout_ms: 0 is out of range",
        ),
        (
            "[ledger]\nmax_body_bytes = 0",
            "ledger.max_body_bytes: 0 is out of range; allowed is 1024",
        ),
        (
            "[ledger]\nmax_batch = 0",
            "ledger.max_batch: 0 is out of range",
        ),
        (
            "[ledger]\nmax_batch = 23832",
            "ledger.max_batch: 23832 is out of range; allowed is 1 to 23831",
        ),
        (
            "[ledger]\nmax_batch = 100\nmax_body_bytes = 4000",
            "allowed is 1 to 90",
        ),
        (
            "[ledger]\nwaiting_poll_ms = 0",
            "ledger.waiting_poll_ms: 0 is out of range; allowed is 10 to",
        ),
        (
            "[ledger]\nrecovery_interval_secs = 0",
            "ledger.recovery_interval_secs: 0 is out of range; allowed is 1 to",
        ),
        (
            "[ledger]\nsweep_interval_secs = 0",
            "ledger.sweep_interval_secs: 0",
        ),
        (
            "[ledger]\nidempotency_retention_hours = 1",
            "allowed is 24 to 720 hours",
        ),
        (
            "[ledger]\nlease_secs = 5",
            "longer than wechat.request_timeout_ms",
        ),
        (
            "[tokens]\ncheck_interval_secs = 0",
            "tokens.check_interval_secs: 0",
        ),
        ("[tokens]\nforce_refreshes_per_day = 21", "WeChat allows 20"),
        (
            "[tokens]\nfetch_refill_secs = 43",
            "tokens.fetch_refill_secs: 43",
        ),
        ("[tokens]\nfetch_burst = 0", "tokens.fetch_burst: 0"),
        ("[http]\nbody_timeout_ms = 0", "http.body_timeout_ms: 0"),
        ("instance_id = \"two words\"", "instance_id"),
    ];
    for (prefix, expected) in cases {
        let error = error_of(from_toml(&format!("{prefix}\n{VALID}")));
        assert!(error.contains(expected), "{prefix}: {error}");
    }
    assert!(error_of(from_toml("")).contains("no mini-program"));
    let bad_scope = VALID.replace("collect, send", "collect, root");
    assert!(error_of(from_toml(&bad_scope)).contains("root"));
    let foreign = VALID.replace("apps = \"wx0123456789abcdef\"", "apps = \"wxother\"");
    assert!(error_of(from_toml(&foreign)).contains("wxother"));
}

#[test]
fn keys_that_could_never_match_are_refused() {
    let key = |key: &str| VALID.replace("0123456789abcdef0123", key);
    let cases = [
        ("short", "shorter than 16 characters"),
        // 8 characters in 16 bytes: counted in characters.
        ("éééééééé", "shorter than 16 characters"),
        ("                ", "whitespace"),
        (" 0123456789abcdef0123", "whitespace"),
        ("0123456789abcdef0123 ", "whitespace"),
        ("0123456789abcdef0123\t", "whitespace"),
        ("0123456789abcdéf0123", "visible ASCII"),
        ("éééééééééééééééé", "visible ASCII"),
    ];
    for (bad, expected) in cases {
        let error = error_of(from_toml(&key(bad)));
        assert!(error.contains(expected), "{bad:?}: {error}");
    }
    let twice = format!(
        "{VALID}\n[api_keys.b]\nkey = \"0123456789abcdef0123\"\napps = \"*\"\nscopes = \"admin\""
    );
    let error = error_of(from_toml(&twice));
    assert!(
        error.contains("api_keys.a and api_keys.b have the same key"),
        "{error}"
    );
    assert!(!error.contains("0123456789abcdef0123"), "{error}");
}

#[test]
fn host_names_resolve_for_listen() {
    let settings = from_toml(&format!("listen = \"localhost:8080\"\n{VALID}")).unwrap();
    assert_eq!(settings.listen, "localhost:8080");
    from_toml(&format!("listen = \"[::1]:0\"\n{VALID}")).unwrap();
}

#[test]
fn secrets_do_not_show_in_debug_output() {
    let settings = from_toml(VALID).unwrap();
    let printed = format!("{settings:?}");
    assert!(!printed.contains("s3cret"));
    assert!(!printed.contains("0123456789abcdef0123"));
}

const PUSH_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

fn app_with(lines: &str) -> String {
    format!(
        "[apps.wx0123456789abcdef]\nsecret = \"s3cret\"\n{lines}\n[api_keys.a]\nkey = \"0123456789abcdef0123\"\napps = \"*\"\nscopes = \"send\""
    )
}

#[test]
fn the_push_settings_are_read_and_checked() {
    let settings = from_toml(&app_with(&format!(
        "push_token = \"Tok3n\"\nencoding_aes_key = \"{PUSH_KEY}\"\n\
         previous_encoding_aes_key = \"{}\"\nsubscribe_grants_from = \"wechat\"",
        "A".repeat(43)
    )))
    .unwrap();
    let app = &settings.apps["wx0123456789abcdef"];
    assert_eq!(app.subscribe_grants_from, GrantsFrom::Wechat);
    let keys = app.push_keys("wx0123456789abcdef").unwrap().unwrap();
    assert!(keys.current.is_some() && keys.previous.is_some());
    assert!(!keys.plain_allowed, "with a key, plain pushes are refused");
    // No key shown in Debug.
    let debug = format!("{app:?} {keys:?}");
    assert!(
        !debug.contains(PUSH_KEY) && !debug.contains("Tok3n"),
        "{debug}"
    );

    // Defaults: no push, grants from the frontend.
    let settings = from_toml(VALID).unwrap();
    let app = &settings.apps["wx0123456789abcdef"];
    assert_eq!(app.subscribe_grants_from, GrantsFrom::Frontend);
    assert!(app.push_keys("wx0123456789abcdef").unwrap().is_none());
    // A token alone: plain pushes only.
    let settings = from_toml(&app_with("push_token = \"abc\"")).unwrap();
    let keys = settings.apps["wx0123456789abcdef"]
        .push_keys("wx0123456789abcdef")
        .unwrap()
        .unwrap();
    assert!(keys.plain_allowed && keys.current.is_none());
    // From the environment, byte for byte.
    let settings = with_env(
        VALID,
        &[
            ("FORMID__APPS__WX0123456789ABCDEF__PUSH_TOKEN", "0012"),
            (
                "FORMID__APPS__WX0123456789ABCDEF__ENCODING_AES_KEY",
                PUSH_KEY,
            ),
        ],
    )
    .unwrap();
    let app = &settings.apps["wx0123456789abcdef"];
    assert_eq!(app.push_token.as_ref().unwrap().expose_secret(), "0012");
}

#[test]
fn invalid_push_settings_are_refused_without_showing_the_key() {
    let short = "abcdefghijklmnopqrstuvwxyz0123456789ABCDE";
    let cases = [
        (
            format!("push_token = \"t\"\nencoding_aes_key = \"{PUSH_KEY}\""),
            "push_token",
        ),
        ("push_token = \"bad token!\"".to_owned(), "push_token"),
        (
            format!("push_token = \"abc\"\nencoding_aes_key = \"{short}\""),
            "encoding_aes_key: an EncodingAESKey has 43 characters, this one has 41",
        ),
        (
            format!(
                "push_token = \"abc\"\nencoding_aes_key = \"{}+\"",
                &PUSH_KEY[..42]
            ),
            "encoding_aes_key: an EncodingAESKey uses only",
        ),
        (
            format!("encoding_aes_key = \"{PUSH_KEY}\""),
            "set only with apps.wx0123456789abcdef.push_token",
        ),
        (
            format!("push_token = \"abc\"\nprevious_encoding_aes_key = \"{PUSH_KEY}\""),
            "needs apps.wx0123456789abcdef.encoding_aes_key",
        ),
        (
            "subscribe_grants_from = \"wechat\"".to_owned(),
            "subscribe_grants_from = \"wechat\" needs the message push",
        ),
        (
            "push_token = \"abc\"\nsubscribe_grants_from = \"server\"".to_owned(),
            "subscribe_grants_from",
        ),
        (
            "push_tokn = \"abc\"".to_owned(),
            "`apps.wx0123456789abcdef.push_token`",
        ),
    ];
    for (lines, expected) in cases {
        let error = error_of(from_toml(&app_with(&lines)));
        assert!(error.contains(expected), "{lines}: {error}");
        assert!(!error.contains(&PUSH_KEY[..20]), "{error}");
    }
}

#[test]
fn the_compatible_endpoint_is_off_unless_set_and_its_settings_are_checked() {
    let settings = from_toml(VALID).unwrap();
    assert!(settings.proxy.listen.is_none());
    assert!(settings.proxy.ledger_sends("wx0123456789abcdef"));
    let on = from_toml(&format!(
        "{VALID}\n[proxy]\nlisten = \"127.0.0.1:0\"\n[proxy.apps.wx0123456789abcdef]\nledger_sends = false\n"
    ))
    .unwrap();
    assert_eq!(on.proxy.listen.as_deref(), Some("127.0.0.1:0"));
    assert!(!on.proxy.ledger_sends("wx0123456789abcdef"));
    let from_env = with_env(
        VALID,
        &[
            ("FORMID__PROXY__LISTEN", "127.0.0.1:0"),
            ("FORMID__PROXY__MAX_BODY_BYTES", "65536"),
        ],
    )
    .unwrap();
    assert_eq!(from_env.proxy.max_body_bytes, 65_536);
    for (extra, expected) in [
        ("[proxy]\nlisten = \"nowhere\"", "proxy.listen"),
        ("[proxy]\nmax_body_bytes = 10", "proxy.max_body_bytes"),
        (
            "[proxy.apps.wxother]\nledger_sends = false",
            "proxy.apps.wxother",
        ),
        ("[proxy]\nlisen = \"127.0.0.1:0\"", "proxy.listen"),
        (
            "[proxy.apps.wx0123456789abcdef]\nledger_send = false",
            "ledger_sends",
        ),
    ] {
        let error = error_of(from_toml(&format!("{VALID}\n{extra}\n")));
        assert!(error.contains(expected), "{extra}: {error}");
    }
}

#[test]
fn log_format_is_text_unless_json_is_asked_for() {
    assert_eq!(from_toml(VALID).unwrap().log_format, LogFormat::Text);
    let json = with_env(VALID, &[("FORMID__LOG_FORMAT", "json")]).unwrap();
    assert_eq!(json.log_format, LogFormat::Json);
    let refused = error_of(from_toml(&format!("log_format = \"yaml\"\n{VALID}")));
    assert!(refused.contains("log_format"), "{refused}");
}

#[test]
fn metrics_are_off_unless_a_listener_of_their_own_is_set() {
    assert_eq!(from_toml(VALID).unwrap().metrics.listen, None);
    let on = with_env(VALID, &[("FORMID__METRICS__LISTEN", "127.0.0.1:9090")]).unwrap();
    assert_eq!(on.metrics.listen.as_deref(), Some("127.0.0.1:9090"));
    let bad = error_of(with_env(VALID, &[("FORMID__METRICS__LISTEN", "nowhere")]));
    assert!(bad.contains("metrics.listen"), "{bad}");
    let shared = error_of(from_toml(&format!(
        "listen = \"127.0.0.1:8080\"\n[metrics]\nlisten = \"127.0.0.1:8080\"\n{VALID}"
    )));
    assert!(shared.contains("listener of its own"), "{shared}");
    let misspelt = error_of(from_toml(&format!(
        "[metrics]\nlisten_on = \"127.0.0.1:9090\"\n{VALID}"
    )));
    assert!(
        misspelt.contains("did you mean `metrics.listen`"),
        "{misspelt}"
    );
}
