//! The test server behaves like the production Profilometre API of shared/API.md
//! (SimpleJWT with rotation + blacklist), and the harness's control calls work.
//! These tests use no gateway: they check the server and the harness themselves.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

struct Tokens {
    access: String,
    refresh: String,
}

fn post(server: &TestServer, path: &str, body: Value, bearer: Option<&str>) -> (u16, Value) {
    let mut req = server.client().post(server.url(path)).json(&body);
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    let resp = req.send().expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().expect("body");
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v)
}

fn login(server: &TestServer, user: &str, password: &str) -> Tokens {
    let (status, v) = post(
        server,
        "/api/token/",
        json!({"username": user, "password": password}),
        None,
    );
    assert_eq!(status, 200, "login: {v}");
    Tokens {
        access: v["access"].as_str().expect("access").to_owned(),
        refresh: v["refresh"].as_str().expect("refresh").to_owned(),
    }
}

fn reading(timestamp: &str, temperature: f64) -> Value {
    json!({"temperature": temperature, "humidite": 51.2, "accelerometre": 0.98, "timestamp": timestamp})
}

#[test]
fn login_post_refresh_rotation_and_blacklist() {
    let server = TestServer::start(ServerOptions::default());
    server.create_user("iot_device@example.com", "pw-1");

    // Wrong password: 401 without `code`.
    let (status, v) = post(
        &server,
        "/api/token/",
        json!({"username": "iot_device@example.com", "password": "nope"}),
        None,
    );
    assert_eq!(status, 401, "{v}");
    assert!(v.get("code").is_none(), "{v}");
    // Missing field: 400.
    let (status, _) = post(&server, "/api/token/", json!({"username": "x"}), None);
    assert_eq!(status, 400);

    let t0 = login(&server, "iot_device@example.com", "pw-1");

    // Profile.
    let resp = server
        .client()
        .get(server.url("/api/auth/profile/"))
        .bearer_auth(&t0.access)
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let profile: Value = resp.json().unwrap();
    assert_eq!(profile["username"], "iot_device@example.com");
    assert!(profile.get("id").is_some() && profile.get("email").is_some());

    // A reading, stored with its timestamp as sent.
    let (status, v) = post(
        &server,
        "/api/send/data/",
        reading("2026-11-23T22:48:49.123Z", 23.4),
        Some(&t0.access),
    );
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["timestamp"], "2026-11-23T22:48:49.123Z");

    // Unauthenticated / bad tokens: 401 with WWW-Authenticate.
    let resp = server
        .client()
        .post(server.url("/api/send/data/"))
        .json(&reading("2026-11-23T22:48:50.000Z", 1.0))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(
        resp.headers()["www-authenticate"].to_str().unwrap(),
        "Bearer realm=\"api\""
    );
    let (status, v) = post(
        &server,
        "/api/send/data/",
        reading("2026-11-23T22:48:50.000Z", 1.0),
        Some(&t0.refresh),
    );
    assert_eq!(status, 401, "a refresh token is no access token: {v}");
    assert_eq!(v["code"], "token_not_valid");

    // Validation: 400 for a bad or offset-less timestamp, a non-numeric value.
    for bad in [
        json!({"temperature": 1.0, "timestamp": "yesterday"}),
        json!({"temperature": 1.0, "timestamp": "2026-11-23T22:48:49"}),
        json!({"temperature": "hot", "timestamp": "2026-11-23T22:48:49Z"}),
        json!({"temperature": 1.0}),
    ] {
        let (status, v) = post(&server, "/api/send/data/", bad.clone(), Some(&t0.access));
        assert_eq!(status, 400, "{bad} -> {v}");
    }

    // Two refreshes with rotation: each returns a new refresh token, the old one dies.
    let (status, v) = post(
        &server,
        "/api/token/refresh/",
        json!({"refresh": t0.refresh}),
        None,
    );
    assert_eq!(status, 200, "{v}");
    let r1 = v["refresh"]
        .as_str()
        .expect("rotation returns a refresh")
        .to_owned();
    assert_ne!(r1, t0.refresh);
    let access1 = v["access"].as_str().unwrap().to_owned();
    let (status, v) = post(&server, "/api/token/refresh/", json!({"refresh": r1}), None);
    assert_eq!(status, 200, "{v}");
    let r2 = v["refresh"].as_str().unwrap().to_owned();
    assert_ne!(r2, r1);

    // The rotated-out tokens are refused: 401 token_not_valid (blacklisted).
    for old in [&t0.refresh, &r1] {
        let (status, v) = post(
            &server,
            "/api/token/refresh/",
            json!({"refresh": old}),
            None,
        );
        assert_eq!(status, 401, "{v}");
        assert_eq!(v["code"], "token_not_valid", "{v}");
    }
    // verify: a blacklisted refresh token is a 400, a good one 200.
    let (status, _) = post(&server, "/api/token/verify/", json!({"token": r1}), None);
    assert_eq!(status, 400);
    let (status, _) = post(&server, "/api/token/verify/", json!({"token": r2}), None);
    assert_eq!(status, 200);

    // The access tokens stay valid until they expire.
    let (status, v) = post(
        &server,
        "/api/send/data/",
        reading("2026-11-23T22:48:51.500Z", 24.0),
        Some(&access1),
    );
    assert_eq!(status, 201, "{v}");

    // Admin revocation: blacklist-all kills r2.
    assert!(server.blacklist_all() >= 1);
    let (status, v) = post(&server, "/api/token/refresh/", json!({"refresh": r2}), None);
    assert_eq!(status, 401, "{v}");

    let stats = server.stats();
    assert_eq!(stats.login_ok, 1);
    assert_eq!(stats.login_failed, 2);
    assert_eq!(stats.refresh_ok, 2);
    assert_eq!(stats.refresh_failed, 3);
    assert_eq!(stats.data_ok, 2);
    assert_eq!(stats.data_401, 2);
    assert_eq!(stats.data_400, 4);
    assert_eq!(stats.profile_ok, 1);

    let readings = server.readings();
    assert_eq!(readings.len(), 2);
    assert_eq!(readings[0].timestamp, "2026-11-23T22:48:49.123Z");
    assert_eq!(readings[0].timestamp_us, 1_795_474_129_123_000);
    assert_eq!(readings[0].temperature, Some(23.4));
    assert_eq!(readings[0].humidite, Some(51.2));
    assert_eq!(readings[0].username, "iot_device@example.com");
    assert!(readings[1].id > readings[0].id);
    assert!((now_us() - readings[1].received_at_us).abs() < 60_000_000);
}

#[test]
fn access_expires_and_inactive_user_is_refused() {
    let server = TestServer::start(ServerOptions {
        access_lifetime: Duration::from_millis(1500),
        ..Default::default()
    });
    server.create_user("u", "p");
    let t = login(&server, "u", "p");
    let send = |access: &str| {
        post(
            &server,
            "/api/send/data/",
            reading("2026-01-01T00:00:00.000Z", 20.0),
            Some(access),
        )
    };
    assert_eq!(send(&t.access).0, 201);
    wait_until(
        "the access token to expire",
        Duration::from_secs(10),
        || send(&t.access).0 == 401,
    );
    let (_, v) = send(&t.access);
    assert_eq!(v["code"], "token_not_valid", "{v}");

    server.set_user_active("u", false);
    let (status, v) = post(
        &server,
        "/api/token/",
        json!({"username": "u", "password": "p"}),
        None,
    );
    assert_eq!(status, 401, "{v}");
    let (status, v) = post(
        &server,
        "/api/token/refresh/",
        json!({"refresh": t.refresh}),
        None,
    );
    assert_eq!(status, 401, "inactive user must not refresh: {v}");
}

#[test]
fn faults_restart_and_persistence() {
    let mut server = TestServer::start(ServerOptions {
        access_lifetime: Duration::from_secs(120),
        ..Default::default()
    });
    server.create_user("u", "p");
    let t = login(&server, "u", "p");

    server.set_faults(&Faults {
        fail_ratio: 1.0,
        retry_after: Some(7),
        reject_temperature_above: None,
    });
    let resp = server
        .client()
        .post(server.url("/api/send/data/"))
        .bearer_auth(&t.access)
        .json(&reading("2026-01-01T00:00:00.000Z", 20.0))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    assert_eq!(resp.headers()["retry-after"].to_str().unwrap(), "7");
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(resp.text().unwrap().contains("<html>"));

    server.set_faults(&Faults {
        fail_ratio: 0.0,
        retry_after: None,
        reject_temperature_above: Some(29.5),
    });
    let (status, v) = post(
        &server,
        "/api/send/data/",
        reading("2026-01-01T00:00:01.000Z", 29.6),
        Some(&t.access),
    );
    assert_eq!(status, 400, "{v}");
    let (status, _) = post(
        &server,
        "/api/send/data/",
        reading("2026-01-01T00:00:02.000Z", 29.5),
        Some(&t.access),
    );
    assert_eq!(status, 201);

    // Restart: same port, same DB (readings, counters, tokens, faults kept).
    let port = server.port();
    server.restart();
    assert_eq!(server.port(), port);
    assert_eq!(server.readings().len(), 1);
    let (status, _) = post(
        &server,
        "/api/send/data/",
        reading("2026-01-01T00:00:03.000Z", 30.0),
        Some(&t.access),
    );
    assert_eq!(status, 400, "faults survive a restart");
    server.clear_faults();
    let (status, v) = post(
        &server,
        "/api/token/refresh/",
        json!({"refresh": t.refresh}),
        None,
    );
    assert_eq!(status, 200, "refresh tokens survive a restart: {v}");

    let stats = server.stats();
    assert_eq!(stats.data_503, 1);
    assert_eq!(stats.data_400, 2);
    assert_eq!(stats.data_ok, 1);
    assert_eq!(stats.refresh_ok, 1);

    // Stopped: connection refused, then back.
    server.stop();
    assert!(!server.is_running());
    assert!(server
        .client()
        .get(server.url("/api/auth/profile/"))
        .send()
        .is_err());
    server.restart();
    assert_eq!(server.stats().data_ok, 1);
}
