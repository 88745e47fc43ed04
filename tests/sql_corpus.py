"""Real statements for the statement-analysis corpus test.

Typical output of the clients pgproxy fronts (pgbench, SQLAlchemy, Django's
ORM, psql users, migrations) plus the shapes a lexer gets wrong (dollar
quotes, nested comments, function bodies, INSERT ... SELECT, CTEs,
UPDATE ... FROM, ON CONFLICT). ``SUMMARIES`` holds the expected
``db.query.summary`` for statements checked by hand; the test adds the
statements the suite's own recorded conversations carry.
"""

from __future__ import annotations

#: Tables the corpus touches, created (empty) before the statements run on a real server.
SCHEMA = """
CREATE TABLE users (id serial PRIMARY KEY, username text UNIQUE, email text, hashed_password text, created timestamptz DEFAULT now());
CREATE TABLE customers (customer_id int PRIMARY KEY, name text, region text);
CREATE TABLE orders (id serial PRIMARY KEY, order_id int UNIQUE, customer_id int, total numeric, status text, ts timestamptz DEFAULT now(), address text);
CREATE TABLE lines (order_id int, product_id int, qty int, price numeric);
CREATE TABLE products (id int PRIMARY KEY, name text, price numeric, stock int);
CREATE TABLE shipping_details (order_id int, address text);
CREATE TABLE accounts (id int PRIMARY KEY, branch_id int, balance numeric, total int DEFAULT 0);
CREATE TABLE branches (id int PRIMARY KEY, name text, balance numeric);
CREATE TABLE counters (k text PRIMARY KEY, v int);
CREATE TABLE events (id bigserial PRIMARY KEY, kind text, payload jsonb, at timestamptz DEFAULT now());
CREATE TABLE app_user (id serial PRIMARY KEY, password varchar(128), last_login timestamptz, is_superuser bool DEFAULT false,
  username varchar(150) UNIQUE, email varchar(254), is_active bool DEFAULT true, date_joined timestamptz DEFAULT now());
CREATE TABLE auth_group (id serial PRIMARY KEY, name varchar(150) UNIQUE);
CREATE TABLE app_user_groups (id bigserial PRIMARY KEY, user_id int, group_id int);
CREATE TABLE django_session (session_key varchar(40) PRIMARY KEY, session_data text, expire_date timestamptz);
CREATE TABLE blog_post (id bigserial PRIMARY KEY, title varchar(200), body text, author_id int, published timestamptz, views int DEFAULT 0);
CREATE TABLE blog_comment (id bigserial PRIMARY KEY, post_id bigint, author_id int, text text, created timestamptz DEFAULT now());
CREATE TABLE "Mixed Case" (id int, "Value" text);
CREATE SCHEMA IF NOT EXISTS billing;
CREATE TABLE billing.invoices (id int PRIMARY KEY, order_id int, amount numeric, paid bool DEFAULT false);
"""

PGBENCH = [
    "BEGIN",
    "UPDATE pgbench_accounts SET abalance = abalance + -4049 WHERE aid = 63210",
    "SELECT abalance FROM pgbench_accounts WHERE aid = 63210",
    "UPDATE pgbench_tellers SET tbalance = tbalance + -4049 WHERE tid = 7",
    "UPDATE pgbench_branches SET bbalance = bbalance + -4049 WHERE bid = 1",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (7, 1, 63210, -4049, CURRENT_TIMESTAMP)",
    "END",
    "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
    "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)",
    "select count(*) from pgbench_branches",
    "drop table if exists pgbench_accounts, pgbench_branches, pgbench_history, pgbench_tellers",
    "create table pgbench_history(tid int,bid int,aid    int,delta int,mtime timestamp,filler char(22))",
    "create table pgbench_tellers(tid int not null,bid int,tbalance int,filler char(84)) with (fillfactor=100)",
    "truncate table pgbench_accounts, pgbench_branches, pgbench_history, pgbench_tellers",
    "insert into pgbench_branches(bid,bbalance) values(1,0)",
    "insert into pgbench_tellers(tid,bid,tbalance) values (1,1,0)",
    "copy pgbench_accounts from stdin with (freeze on)",
    "vacuum analyze pgbench_branches",
    "alter table pgbench_branches add primary key (bid)",
    "alter table pgbench_tellers add primary key (tid)",
]

SQLALCHEMY = [
    "select pg_catalog.version()",
    "select current_schema()",
    "show transaction isolation level",
    "show standard_conforming_strings",
    "BEGIN",
    "SELECT pg_catalog.pg_class.relname FROM pg_catalog.pg_class JOIN pg_catalog.pg_namespace ON "
    "pg_catalog.pg_namespace.oid = pg_catalog.pg_class.relnamespace WHERE pg_catalog.pg_class.relname = $1::VARCHAR "
    "AND pg_catalog.pg_class.relkind = ANY (ARRAY[$2::VARCHAR, $3::VARCHAR, $4::VARCHAR, $5::VARCHAR, $6::VARCHAR]) "
    "AND pg_catalog.pg_table_is_visible(pg_catalog.pg_class.oid) AND pg_catalog.pg_namespace.nspname != $7::VARCHAR",
    "\nCREATE TABLE users (\n\tid SERIAL NOT NULL, \n\tusername VARCHAR(50) NOT NULL, \n\temail VARCHAR(120), "
    "\n\thashed_password VARCHAR(256), \n\tPRIMARY KEY (id), \n\tUNIQUE (username)\n)\n\n",
    "INSERT INTO users (username, email, hashed_password) VALUES ($1::VARCHAR, $2::VARCHAR, $3::VARCHAR) RETURNING users.id",
    "SELECT users.id AS users_id, users.username AS users_username, users.email AS users_email, "
    "users.hashed_password AS users_hashed_password \nFROM users \nWHERE users.username = $1::VARCHAR \n LIMIT $2::INTEGER",
    "SELECT users.id AS users_id, users.username AS users_username \nFROM users \nWHERE users.id = $1::INTEGER",
    "UPDATE users SET email=$1::VARCHAR WHERE users.id = $2::INTEGER",
    "DELETE FROM users WHERE users.id = $1::INTEGER",
    "SELECT orders.id AS orders_id, orders.total AS orders_total, customers_1.name AS customers_1_name \nFROM orders "
    "LEFT OUTER JOIN customers AS customers_1 ON customers_1.customer_id = orders.customer_id \nWHERE orders.status = $1::VARCHAR",
    "SELECT count(*) AS count_1 \nFROM (SELECT orders.id AS orders_id \nFROM orders \nWHERE orders.total > $1::NUMERIC) AS anon_1",
    "SELECT anon_1.orders_id, lines.qty FROM (SELECT orders.id AS orders_id FROM orders ORDER BY orders.ts DESC "
    "LIMIT $1::INTEGER) AS anon_1 JOIN lines ON anon_1.orders_id = lines.order_id",
    "INSERT INTO lines (order_id, product_id, qty, price) SELECT p0::INTEGER, p1::INTEGER, p2::INTEGER, p3::NUMERIC "
    "FROM (VALUES ($1, $2, $3, $4, 0), ($5, $6, $7, $8, 1)) AS imp_sen(p0, p1, p2, p3, sen_counter) ORDER BY sen_counter",
    "SELECT products.id, products.name FROM products WHERE products.id IN (__[POSTCOMPILE_id_1])".replace(
        "__[POSTCOMPILE_id_1]", "$1::INTEGER, $2::INTEGER, $3::INTEGER"
    ),
    "SELECT EXISTS (SELECT * FROM users WHERE users.email = $1::VARCHAR) AS anon_1",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT sa_savepoint_1",
    "RELEASE SAVEPOINT sa_savepoint_1",
    "ROLLBACK TO SAVEPOINT sa_savepoint_1",
    "DROP TABLE users",
]

DJANGO = [
    'SELECT "app_user"."id", "app_user"."password", "app_user"."last_login", "app_user"."is_superuser", '
    '"app_user"."username", "app_user"."email", "app_user"."is_active", "app_user"."date_joined" FROM "app_user" '
    'WHERE "app_user"."username" = \'alice\' LIMIT 21',
    'SELECT "app_user"."id", "app_user"."username" FROM "app_user" WHERE "app_user"."id" = 1 LIMIT 21',
    'SELECT 1 AS "a" FROM "app_user" WHERE "app_user"."email" = \'a@example.com\' LIMIT 1',
    'SELECT COUNT(*) AS "__count" FROM "blog_post" WHERE "blog_post"."published" IS NOT NULL',
    'INSERT INTO "blog_post" ("title", "body", "author_id", "published", "views") VALUES '
    "('Hello', 'World', 1, '2026-11-27T12:00:00+00:00'::timestamptz, 0) RETURNING \"blog_post\".\"id\"",
    'UPDATE "blog_post" SET "views" = ("blog_post"."views" + 1) WHERE "blog_post"."id" = 7',
    'DELETE FROM "blog_comment" WHERE "blog_comment"."post_id" IN (1, 2, 3)',
    'SELECT "blog_post"."id", "blog_post"."title", "app_user"."id", "app_user"."username" FROM "blog_post" '
    'INNER JOIN "app_user" ON ("blog_post"."author_id" = "app_user"."id") ORDER BY "blog_post"."published" DESC LIMIT 10',
    'SELECT "blog_comment"."id", "blog_comment"."text" FROM "blog_comment" WHERE "blog_comment"."post_id" IN '
    '(SELECT U0."id" FROM "blog_post" U0 WHERE U0."author_id" = 3) ORDER BY "blog_comment"."created" ASC',
    'SELECT "auth_group"."id", "auth_group"."name" FROM "auth_group" INNER JOIN "app_user_groups" ON '
    '("auth_group"."id" = "app_user_groups"."group_id") WHERE "app_user_groups"."user_id" = 1',
    'SELECT "django_session"."session_key", "django_session"."session_data", "django_session"."expire_date" FROM '
    '"django_session" WHERE ("django_session"."expire_date" > \'2026-11-27T12:00:00+00:00\'::timestamptz AND '
    '"django_session"."session_key" = \'abc123\') LIMIT 21',
    'INSERT INTO "django_session" ("session_key", "session_data", "expire_date") VALUES (%s, %s, %s)'.replace(
        "%s", "$1", 1
    )
    .replace("%s", "$2", 1)
    .replace("%s", "$3", 1),
    'UPDATE "app_user" SET "last_login" = \'2026-11-27T12:00:00+00:00\'::timestamptz WHERE "app_user"."id" = 1',
    'SAVEPOINT "s140245_x1"',
    'RELEASE SAVEPOINT "s140245_x1"',
    'SELECT "blog_post"."author_id", COUNT("blog_post"."id") AS "n" FROM "blog_post" GROUP BY "blog_post"."author_id" '
    'HAVING COUNT("blog_post"."id") > 5 ORDER BY "n" DESC',
    'SELECT DISTINCT "app_user"."email" FROM "app_user" WHERE UPPER("app_user"."email"::text) LIKE UPPER(\'%example%\')',
    'INSERT INTO "app_user_groups" ("user_id", "group_id") VALUES (1, 2), (1, 3) ON CONFLICT DO NOTHING',
    'SELECT "blog_post"."id" FROM "blog_post" WHERE "blog_post"."id" = 5 FOR UPDATE',
    'UPDATE "app_user" SET "is_active" = false WHERE "app_user"."id" IN (SELECT U0."user_id" FROM "app_user_groups" U0 '
    'WHERE U0."group_id" = 9)',
    'CREATE TABLE "polls_question" ("id" bigint NOT NULL PRIMARY KEY GENERATED BY DEFAULT AS IDENTITY, '
    '"question_text" varchar(200) NOT NULL, "pub_date" timestamp with time zone NOT NULL)',
    'CREATE INDEX "blog_post_author_id_dd7a8485" ON "blog_post" ("author_id")',
    'ALTER TABLE "blog_comment" ADD CONSTRAINT "blog_comment_post_id_fk" FOREIGN KEY ("post_id") REFERENCES '
    '"blog_post" ("id") DEFERRABLE INITIALLY DEFERRED',
    'SET CONSTRAINTS "blog_comment_post_id_fk" IMMEDIATE',
    'DROP TABLE "polls_question" CASCADE',
]

#: psql's backslash commands, monitoring dashboards and operators at a prompt.
ADMIN = [
    "SELECT n.nspname as \"Schema\",\n  c.relname as \"Name\",\n  CASE c.relkind WHEN 'r' THEN 'table' WHEN 'v' THEN "
    '\'view\' END as "Type",\n  pg_catalog.pg_get_userbyid(c.relowner) as "Owner"\nFROM pg_catalog.pg_class c\n'
    "     LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace\nWHERE c.relkind IN ('r','p','v','m','S','f','')\n"
    "      AND n.nspname <> 'pg_catalog'\n      AND n.nspname !~ '^pg_toast'\n  AND pg_catalog.pg_table_is_visible(c.oid)\n"
    "ORDER BY 1,2;",
    "SELECT c.oid,\n  n.nspname,\n  c.relname\nFROM pg_catalog.pg_class c\n     LEFT JOIN pg_catalog.pg_namespace n ON "
    "n.oid = c.relnamespace\nWHERE c.relname OPERATOR(pg_catalog.~) '^(users)$' COLLATE pg_catalog.default\n"
    "  AND pg_catalog.pg_table_is_visible(c.oid)\nORDER BY 2, 3;",
    "SELECT a.attname,\n  pg_catalog.format_type(a.atttypid, a.atttypmod),\n  a.attnotnull\nFROM pg_catalog.pg_attribute a\n"
    "WHERE a.attrelid = '16384' AND a.attnum > 0 AND NOT a.attisdropped\nORDER BY a.attnum;",
    'SELECT d.datname as "Name", pg_catalog.pg_get_userbyid(d.datdba) as "Owner", '
    'pg_catalog.pg_encoding_to_char(d.encoding) as "Encoding" FROM pg_catalog.pg_database d ORDER BY 1;',
    "SELECT pid, usename, application_name, state, wait_event_type, now() - query_start AS runtime, left(query, 80) "
    "FROM pg_stat_activity WHERE state <> 'idle' AND pid <> pg_backend_pid() ORDER BY runtime DESC",
    "SELECT relname, seq_scan, idx_scan, n_live_tup, n_dead_tup FROM pg_stat_user_tables ORDER BY n_dead_tup DESC LIMIT 20",
    "SELECT l.locktype, l.relation::regclass, l.mode, l.granted, a.query FROM pg_locks l "
    "JOIN pg_stat_activity a ON a.pid = l.pid WHERE NOT l.granted",
    "SELECT pg_size_pretty(pg_total_relation_size('orders'))",
    "SELECT pg_cancel_backend(12345)",
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE state = 'idle in transaction' "
    "AND now() - state_change > interval '10 minutes'",
    "SELECT schemaname, indexrelname, idx_scan FROM pg_stat_user_indexes WHERE idx_scan = 0",
    "SELECT name, setting, unit, source FROM pg_settings WHERE name LIKE 'work%'",
    "SELECT * FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 10",
    "SELECT datname, xact_commit, xact_rollback, blks_hit::float / nullif(blks_hit + blks_read, 0) AS hit_ratio "
    "FROM pg_stat_database",
    "SELECT slot_name, active, pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn) AS lag FROM pg_replication_slots",
    "SELECT current_database(), current_user, inet_server_addr(), inet_server_port(), version()",
    "SELECT set_config('search_path', '', false)",
    "SELECT t.oid, typarray FROM pg_type t JOIN pg_namespace ns ON typnamespace = ns.oid WHERE typname = 'hstore'",
    "SELECT o.id, o.total, sum(l.qty * l.price) OVER (PARTITION BY o.customer_id ORDER BY o.ts "
    "ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS running FROM orders o JOIN lines l ON l.order_id = o.id",
    "SELECT c.region, count(DISTINCT o.customer_id) FROM customers c LEFT JOIN orders o USING (customer_id) "
    "GROUP BY ROLLUP (c.region)",
    "SELECT id FROM events WHERE at >= date_trunc('day', now()) AND kind IN ('a', 'b', 'c') ORDER BY at DESC "
    "FETCH FIRST 5 ROWS ONLY",
    "SELECT * FROM orders WHERE status = 'open' FOR UPDATE SKIP LOCKED LIMIT 1",
    "UPDATE orders SET status = 'shipped' WHERE id = (SELECT id FROM orders WHERE status = 'open' "
    "ORDER BY ts FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING id",
    "DELETE FROM events WHERE at < now() - interval '30 days'",
    "INSERT INTO billing.invoices (id, order_id, amount) SELECT o.id, o.order_id, o.total FROM orders o "
    "WHERE NOT EXISTS (SELECT 1 FROM billing.invoices i WHERE i.order_id = o.order_id)",
    "WITH upd AS (UPDATE products SET stock = stock - 1 WHERE id = 3 AND stock > 0 RETURNING id) "
    "INSERT INTO lines (order_id, product_id, qty, price) SELECT 1, id, 1, 9.5 FROM upd",
]

#: The shapes the issue names, and others a lexer gets wrong; with their expected summary.
SUMMARIES: dict[str, str] = {
    "SELECT * FROM wuser_table WHERE username = 'jdoe'": "SELECT wuser_table",
    "INSERT INTO shipping_details (order_id, address) SELECT order_id, address FROM orders WHERE order_id = 1": (
        "INSERT shipping_details SELECT orders"
    ),
    "SELECT * FROM orders o JOIN customers c ON o.customer_id = c.customer_id": "SELECT orders customers",
    "SELECT order_date FROM (SELECT o.ts AS order_date FROM orders o JOIN customers c ON o.customer_id = c.customer_id) x": (
        "SELECT SELECT orders customers"
    ),
    'SELECT * FROM "Mixed Case" m WHERE m."Value" = \'x\'': 'SELECT "Mixed Case"',
    "SELECT * FROM billing.invoices i JOIN orders o ON o.order_id = i.order_id": "SELECT billing.invoices orders",
    "WITH big AS (SELECT customer_id, sum(total) AS t FROM orders GROUP BY 1 HAVING sum(total) > 100) "
    "SELECT c.name, big.t FROM customers c JOIN big USING (customer_id)": "SELECT orders SELECT customers",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 10) SELECT n FROM r": (
        "SELECT SELECT SELECT"
    ),
    "WITH moved AS (DELETE FROM orders WHERE status = 'archived' RETURNING *) "
    "INSERT INTO shipping_details (order_id, address) SELECT order_id, address FROM moved": (
        "DELETE orders INSERT shipping_details SELECT"
    ),
    "UPDATE accounts a SET balance = a.balance + b.balance FROM branches b WHERE a.branch_id = b.id": (
        "UPDATE accounts branches"
    ),
    "UPDATE accounts SET total = total + 1 FROM (SELECT id FROM branches WHERE balance > 0) b "
    "WHERE accounts.branch_id = b.id AND accounts.id IN (SELECT order_id FROM lines)": (
        "UPDATE accounts SELECT branches SELECT lines"
    ),
    "DELETE FROM lines l USING orders o WHERE l.order_id = o.id AND o.status = 'cancelled'": "DELETE lines orders",
    "INSERT INTO counters (k, v) VALUES ('hits', 1) ON CONFLICT (k) DO UPDATE SET v = counters.v + EXCLUDED.v": (
        "INSERT counters"
    ),
    "INSERT INTO counters (k, v) SELECT kind, count(*) FROM events GROUP BY kind "
    "ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v RETURNING k, v": "INSERT counters SELECT events",
    "INSERT INTO products (id, name, price, stock) VALUES (1, 'a;b', 9.99, 3) ON CONFLICT DO NOTHING": "INSERT products",
    "MERGE INTO products p USING (VALUES (1, 5)) AS s(id, qty) ON p.id = s.id "
    "WHEN MATCHED THEN UPDATE SET stock = p.stock - s.qty WHEN NOT MATCHED THEN DO NOTHING": "MERGE products",
    "SELECT $$it's a ; semicolon$$ AS a, $tag$ nested $$ dollar $$ ; $tag$ AS b FROM users": "SELECT users",
    "SELECT /* outer /* nested ; comment */ still ; comment */ id FROM users": "SELECT users",
    "SELECT E'it\\'s ; escaped' AS s, U&'\\0041' AS u FROM users": "SELECT users",
    "CREATE FUNCTION order_total(oid int) RETURNS numeric LANGUAGE plpgsql AS $body$\nDECLARE t numeric;\n"
    "BEGIN\n  SELECT sum(price * qty) INTO t FROM lines WHERE order_id = oid;\n  RETURN t;\nEND;\n$body$": (
        "CREATE FUNCTION order_total"
    ),
    "CREATE OR REPLACE FUNCTION touch() RETURNS trigger AS $$ BEGIN NEW.at := now(); RETURN NEW; END; $$ LANGUAGE plpgsql": (
        "CREATE FUNCTION touch"
    ),
    "CREATE PROCEDURE archive_orders(days int) LANGUAGE sql AS $$ DELETE FROM orders WHERE ts < now() - days * interval '1 day' $$": (
        "CREATE PROCEDURE archive_orders"
    ),
    "CREATE FUNCTION add(a int, b int) RETURNS int LANGUAGE sql IMMUTABLE RETURN a + b": "CREATE FUNCTION add",
    "DO $$ BEGIN PERFORM 1; RAISE NOTICE 'done;'; END $$": "DO",
    "SELECT 1 UNION SELECT id FROM users EXCEPT SELECT customer_id FROM customers": "SELECT SELECT users SELECT customers",
    "SELECT * FROM users WHERE id IN (SELECT customer_id FROM orders WHERE total > 10)": "SELECT users SELECT orders",
    "SELECT u.id, (SELECT count(*) FROM orders o WHERE o.customer_id = u.id) AS n FROM users u": (
        "SELECT SELECT orders users"
    ),
    "SELECT * FROM users u, LATERAL (SELECT * FROM orders o WHERE o.customer_id = u.id LIMIT 3) lo": (
        "SELECT users SELECT orders"
    ),
    "SELECT * FROM generate_series(1, 10) g": "SELECT",
    "SELECT now()": "SELECT",
    "SELECT * FROM users WHERE email LIKE '%;%' ORDER BY id LIMIT 10 OFFSET 20": "SELECT users",
    "SELECT id INTO TEMP TABLE tmp_ids FROM users": "SELECT tmp_ids users",
    "CREATE TABLE order_totals AS SELECT customer_id, sum(total) FROM orders GROUP BY 1": (
        "CREATE TABLE AS order_totals SELECT orders"
    ),
    "CREATE MATERIALIZED VIEW mv_totals AS SELECT customer_id, sum(total) FROM orders GROUP BY 1": (
        "CREATE MATERIALIZED VIEW mv_totals SELECT orders"
    ),
    "REFRESH MATERIALIZED VIEW mv_totals": "REFRESH MATERIALIZED VIEW mv_totals",
    "CREATE VIEW recent_orders AS SELECT * FROM orders WHERE ts > now() - interval '1 day'": (
        "CREATE VIEW recent_orders SELECT orders"
    ),
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_ts ON orders (ts)": "CREATE INDEX orders",
    "CREATE UNIQUE INDEX users_lower_email ON users (lower(email))": "CREATE INDEX users",
    "ALTER TABLE orders ADD COLUMN note text": "ALTER TABLE orders",
    "ALTER TABLE IF EXISTS orders RENAME COLUMN note TO remark": "ALTER TABLE orders",
    "CREATE FUNCTION answer() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT count(*) FROM orders; END": (
        "CREATE FUNCTION answer"
    ),
    "ALTER TABLE orders RENAME TO orders_old": "ALTER TABLE orders",
    "ALTER INDEX orders_ts RENAME TO orders_ts_idx": "ALTER INDEX orders_ts",
    "DROP INDEX IF EXISTS orders_ts_idx": "DROP INDEX orders_ts_idx",
    "DROP VIEW recent_orders": "DROP VIEW recent_orders",
    "DROP FUNCTION IF EXISTS touch()": "DROP FUNCTION",
    "TRUNCATE orders, lines RESTART IDENTITY": "TRUNCATE TABLE orders lines",
    "COPY (SELECT id, email FROM users WHERE id > 10) TO STDOUT WITH (FORMAT csv)": "COPY SELECT users",
    "COPY users (username, email) FROM STDIN": "COPY users",
    "EXPLAIN (ANALYZE, BUFFERS) SELECT * FROM orders WHERE id = 1": "EXPLAIN SELECT orders",
    "EXPLAIN UPDATE accounts SET balance = 0": "EXPLAIN UPDATE accounts",
    "VACUUM (VERBOSE, ANALYZE) orders": "VACUUM orders",
    "ANALYZE users": "ANALYZE users",
    "LOCK TABLE accounts IN SHARE ROW EXCLUSIVE MODE": "LOCK TABLE accounts",
    "CALL archive_orders(30)": "CALL archive_orders",
    "PREPARE q1 (int) AS SELECT * FROM users WHERE id = $1": "PREPARE SELECT users",
    "EXECUTE q1(1)": "EXECUTE",
    "DEALLOCATE q1": "DEALLOCATE",
    "DECLARE c1 CURSOR WITH HOLD FOR SELECT * FROM events": "DECLARE CURSOR SELECT events",
    "FETCH FORWARD 10 FROM c1": "FETCH",
    "MOVE LAST IN c1": "MOVE",
    "CLOSE c1": "CLOSE CURSOR",
    "GRANT SELECT, INSERT ON orders TO PUBLIC": "GRANT orders",
    "REVOKE ALL ON orders FROM PUBLIC": "REVOKE orders",
    "SET search_path TO billing, public": "SET",
    "SET LOCAL statement_timeout = '5s'": "SET",
    "RESET search_path": "RESET",
    "SHOW server_version": "SHOW",
    "START TRANSACTION ISOLATION LEVEL REPEATABLE READ": "START TRANSACTION",
    "BEGIN ISOLATION LEVEL SERIALIZABLE": "BEGIN",
    "COMMIT AND NO CHAIN": "COMMIT",
    "ABORT": "ROLLBACK",
    "LISTEN order_events": "LISTEN",
    "NOTIFY order_events, 'new;order'": "NOTIFY",
    "UNLISTEN *": "UNLISTEN",
    "DISCARD ALL": "DISCARD",
    "CHECKPOINT": "CHECKPOINT",
    "COMMENT ON TABLE orders IS 'customer orders; one row per order'": "COMMENT",
    "CREATE SCHEMA IF NOT EXISTS audit": "CREATE SCHEMA",
    "CREATE SEQUENCE IF NOT EXISTS invoice_no START 1000": "CREATE SEQUENCE invoice_no",
    "SELECT nextval('invoice_no')": "SELECT",
    "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')": "CREATE TYPE",
    "CREATE EXTENSION IF NOT EXISTS pgcrypto": "CREATE EXTENSION",
    "CREATE TRIGGER events_touch BEFORE UPDATE ON events FOR EACH ROW EXECUTE FUNCTION touch()": (
        "CREATE TRIGGER events"
    ),
    "CREATE TEMP TABLE scratch (LIKE orders INCLUDING ALL)": "CREATE TABLE scratch orders",
    "INSERT INTO events (kind, payload) VALUES ('signup', '{\"a\": \"b;c\"}'::jsonb) RETURNING id": "INSERT events",
    "SELECT payload->>'a' AS a FROM events WHERE payload @> '{\"a\": \"b\"}' AND kind = ANY($1)": "SELECT events",
    "SELECT pg_advisory_lock(42)": "SELECT",
    "SELECT pg_sleep(0.01)": "SELECT",
    "SELECT count(*) FILTER (WHERE status = 'open') OVER (PARTITION BY customer_id) FROM orders": "SELECT orders",
    "TABLE users": "SELECT users",
    "VALUES (1, 'a'), (2, 'b')": "SELECT",
}

#: Text PostgreSQL 18's grammar rejects: the lexer describes it.
UNPARSABLE = [
    "SELEKT * FROM users",
    "SELECT * FROM users WHERE",
    "INSERT INTO users VALUES (1, 'unterminated",
    "FROBNICATE TABLE users WITH FORCE",
]

STATEMENTS: list[str] = [*PGBENCH, *SQLALCHEMY, *DJANGO, *ADMIN, *SUMMARIES]
