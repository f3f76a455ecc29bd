use std::time::Duration;

use crate::delivery::Schedule;

#[test]
fn schedule_jitters_honours_retry_after_and_ends() {
    let s = Schedule {
        delays: vec![Duration::from_secs(5), Duration::from_secs(300)],
        max_retry_after: Duration::from_secs(3600),
        disable_after: Duration::from_secs(86400),
        max_waiting: 5000,
    };
    for _ in 0..100 {
        let d = s.delay(1, None).unwrap();
        assert!(
            d >= Duration::from_secs(4) && d <= Duration::from_secs(6),
            "{d:?}"
        );
    }
    assert!(s.delay(2, None).unwrap() >= Duration::from_secs(240));
    assert_eq!(s.delay(3, None), None, "exhausted after the last delay");
    assert_eq!(s.delay(0, None), None);
    assert_eq!(
        s.delay(1, Some(Duration::from_secs(60))),
        Some(Duration::from_secs(60))
    );
    assert_eq!(
        s.delay(1, Some(Duration::from_secs(99999))),
        Some(Duration::from_secs(3600))
    );
    let short = s.delay(1, Some(Duration::from_secs(1))).unwrap();
    assert!(
        short >= Duration::from_secs(4),
        "a shorter Retry-After does not hurry the schedule"
    );
}
