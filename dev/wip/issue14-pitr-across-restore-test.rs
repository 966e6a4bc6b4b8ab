
/// A point-in-time restore whose window holds an earlier in-place restore
/// never runs drhost's own swap against production (its statements naming
/// databases run without a default database, so a replay never sees them)
/// and is refused by the marker the swap left in the target's events: the
/// events after an in-place restore apply to the restored data, which no
/// replay of older backups can rebuild. Before that restore it still works.
#[tokio::test]
async fn a_point_in_time_restore_across_an_earlier_in_place_restore_is_refused_and_leaves_production_alone()
 {
    let base = mariadb_binlog_url();
    let base = base.rsplit_once('/').unwrap().0.to_string();
    let db = format!("drhost_span_{}", unique().replace('-', "_"));
    binlog_exec(&format!("{base}/test"), &format!("CREATE DATABASE {db}")).await;
    binlog_exec(
        &format!("{base}/test"),
        &format!("CREATE DATABASE {db}_copy"),
    )
    .await;
    let url = format!("{base}/{db}");
    binlog_exec(
        &url,
        "CREATE TABLE ledger (id INT PRIMARY KEY, amount INT); \
         CREATE TRIGGER ledger_bi BEFORE INSERT ON ledger FOR EACH ROW SET NEW.amount = NEW.amount; \
         INSERT INTO ledger SELECT seq, seq FROM seq_1_to_1000;",
    )
    .await;
    let s = Setup::new();
    let b = s
        .backups(&format!(
            "[sources.ledger]\nkind = \"mariadb\"\nurl = \"{url}\"\n\
             [sources.copy]\nkind = \"mariadb\"\nurl = \"{url}_copy\"\n\
             [targets.local]\npath = \"local\"\n"
        ))
        .await;
    let full = b
        .create_at("ledger", Kind::Full, at("2030-02-01T00:00:00Z"))
        .await
        .unwrap()
        .manifest;
    binlog_exec(
        &url,
        "SET TIMESTAMP = UNIX_TIMESTAMP('2030-02-01 00:10:00'); \
         INSERT INTO ledger SELECT seq, seq FROM seq_1001_to_1500;",
    )
    .await;
    let mut c = sqlx::MySqlConnection::connect(&url).await.unwrap();
    let row = sqlx::query("SHOW MASTER STATUS")
        .fetch_one(&mut c)
        .await
        .unwrap();
    use sqlx::Row;
    let before_restore = format!("{}:{}", row.get::<String, _>(0), row.get::<u64, _>(1));
    // The in-place restore: production is the full backup again (1000 rows).
    b.restore("ledger", &full.id, "ledger", None, None)
        .await
        .unwrap();
    binlog_exec(
        &url,
        "SET TIMESTAMP = UNIX_TIMESTAMP('2030-02-01 00:20:00'); \
         INSERT INTO ledger SELECT seq, seq FROM seq_2001_to_2100;",
    )
    .await;
    b.create_at("ledger", Kind::Incremental, at("2030-02-01T00:30:00Z"))
        .await
        .unwrap();
    let production = async || {
        (
            binlog_scalar(&url, "SELECT COUNT(*) FROM ledger").await,
            binlog_scalar(
                &url,
                &format!(
                    "SELECT COUNT(*) FROM information_schema.triggers WHERE trigger_schema = '{db}'"
                ),
            )
            .await,
            binlog_scalar(
                &format!("{base}/test"),
                &format!(
                    "SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name LIKE '{db}\\_drhost%'"
                ),
            )
            .await,
        )
    };
    let as_it_was = production().await;
    assert_eq!(as_it_was, (1100, 1, 0));
    // In place and into another database: refused, naming the cause;
    // production keeps its rows and its trigger, and no scratch is left.
    for to in ["ledger", "copy"] {
        let e = b
            .restore("ledger", "latest", to, None, Some("2030-02-01T00:25:00Z"))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("in-place restore"), "{to}: {e}");
        assert_eq!(production().await, as_it_was, "{to}");
    }
    // Up to a point before the in-place restore: the replay works.
    let rep = b
        .restore("ledger", "latest", "copy", None, Some(&before_restore))
        .await
        .unwrap();
    assert_eq!(rep.replayed.len(), 1);
    assert_eq!(
        binlog_scalar(&format!("{url}_copy"), "SELECT COUNT(*) FROM ledger").await,
        1500
    );
    assert_eq!(production().await, as_it_was);
}
