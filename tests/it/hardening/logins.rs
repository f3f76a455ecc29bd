//! Failed logins are slowed per client address (issue 24, finding 9): past
//! `api.max_failed_logins` requests without a valid token in a minute, the
//! address gets 429 with `Retry-After`, while a client at another address
//! with a valid token is answered as before.

use std::{net::IpAddr, time::Duration};

use stamp_relay::config::Paging;
use stamp_relay_simulator::SimConfig;

use crate::harness::{ADMIN_TOKEN, App, Backend, Sim, TestStore, source};

fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<IpAddr>().unwrap())
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_wrong_tokens_gets_429_and_valid_clients_elsewhere_do_not() {
    let sim = Sim::start(SimConfig::default()).await;
    let ts = TestStore::open(Backend::Sqlite).await.unwrap();
    let app = App::spawn_with(
        &ts,
        vec![source(&sim.base_url, &["patients"], Paging::Pages, 100)],
        |c| c.api.max_failed_logins = 5,
    )
    .await;
    let url = format!("{}/v1/resources", app.base);
    let guesser = client_from("127.0.0.1");
    let mut statuses = Vec::new();
    for n in 0..8 {
        let r = guesser
            .get(&url)
            .bearer_auth(format!("guess-number-{n:04}-aaaa"))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            let wait: u64 = r.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=60).contains(&wait), "{wait}");
        }
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429, 429, 429]);
    // Even the right token waits at that address: guessing stops there.
    let r = guesser
        .get(&url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    // Another address with the right token is not slowed.
    let other = client_from("127.0.0.2");
    let r = other
        .get(&url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    app.stop().await;
}
