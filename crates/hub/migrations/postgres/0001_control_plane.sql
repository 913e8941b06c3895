-- Version 1: the control plane (spec §16.3) as the hub stores it.
-- Same tables and constraints as the SQLite backend: ids, timestamps and JSON
-- are stored as canonical text (the hub casts them), integers as BIGINT.
-- `_rowid` orders rows as inserted (SQLite's rowid); the API never reads it.
CREATE TABLE teams (
  _rowid  BIGINT GENERATED ALWAYS AS IDENTITY,
  id          TEXT PRIMARY KEY,
  name        TEXT NOT NULL DEFAULT '',
  created_at  TEXT NOT NULL
);
CREATE TABLE team_gateways (
  _rowid  BIGINT GENERATED ALWAYS AS IDENTITY,
  id                    TEXT PRIMARY KEY,
  team_id               TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
  device_name           TEXT,
  status                TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending','ready','offline','error')),
  capabilities          TEXT NOT NULL DEFAULT '{}',
  full_control_enabled  BOOLEAN NOT NULL DEFAULT false,
  last_seen_at          TEXT,
  ready_at              TEXT,
  vm_id                 TEXT,
  auth_user_id          TEXT UNIQUE,
  revoked_at            TEXT,
  created_at            TEXT NOT NULL,
  updated_at            TEXT NOT NULL
);
CREATE INDEX team_gateways_team_idx ON team_gateways (team_id);
CREATE TABLE gateway_pairing_codes (
  _rowid  BIGINT GENERATED ALWAYS AS IDENTITY,
  code             TEXT PRIMARY KEY,
  team_id          TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
  created_by       TEXT,
  created_at       TEXT NOT NULL,
  expires_at       TEXT NOT NULL,
  used_at          TEXT,
  used_gateway_id  TEXT REFERENCES team_gateways(id) ON DELETE SET NULL
);
CREATE TABLE gateway_jobs (
  _rowid  BIGINT GENERATED ALWAYS AS IDENTITY,
  id                     TEXT PRIMARY KEY,
  team_id                TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
  gateway_id             TEXT REFERENCES team_gateways(id) ON DELETE SET NULL,
  job_type               TEXT NOT NULL DEFAULT 'diagnostic',
  status                 TEXT NOT NULL DEFAULT 'queued' CHECK (status IN ('queued','running','completed','failed','cancelled')),
  payload                TEXT NOT NULL DEFAULT '{}',
  result                 TEXT,
  error                  TEXT,
  debug                  TEXT,
  requested_via          TEXT,
  requested_by_user_id   TEXT,
  requested_by_agent_id  TEXT,
  idempotency_key        TEXT,
  attempt                BIGINT NOT NULL DEFAULT 1 CHECK (attempt >= 0),
  retry_of_job_id        TEXT REFERENCES gateway_jobs(id) ON DELETE SET NULL,
  created_at             TEXT NOT NULL,
  started_at             TEXT,
  completed_at           TEXT,
  updated_at             TEXT NOT NULL
);
CREATE INDEX gateway_jobs_ingress_idx ON gateway_jobs (gateway_id, status, created_at) WHERE status = 'queued';
CREATE INDEX gateway_jobs_team_idx ON gateway_jobs (team_id, created_at);
CREATE INDEX gateway_jobs_idem_idx ON gateway_jobs (team_id, idempotency_key, attempt) WHERE idempotency_key IS NOT NULL;
CREATE TABLE gateway_events (
  _rowid  BIGINT GENERATED ALWAYS AS IDENTITY,
  id          TEXT PRIMARY KEY,
  gateway_id  TEXT NOT NULL REFERENCES team_gateways(id) ON DELETE CASCADE,
  team_id     TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
  provider    TEXT,
  level       TEXT NOT NULL DEFAULT 'info' CHECK (level IN ('debug','info','warn','error')),
  code        TEXT,
  message     TEXT NOT NULL,
  details     TEXT NOT NULL DEFAULT '{}',
  created_at  TEXT NOT NULL
);
CREATE INDEX gateway_events_gateway_idx ON gateway_events (gateway_id, created_at DESC);
CREATE TABLE subagents (
  _rowid  BIGINT GENERATED ALWAYS AS IDENTITY,
  id              TEXT PRIMARY KEY,
  team_id         TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
  gateway_id      TEXT REFERENCES team_gateways(id) ON DELETE SET NULL,
  owner_agent_id  TEXT,
  created_by      TEXT,
  subagent_type   TEXT NOT NULL,
  status          TEXT NOT NULL DEFAULT 'idle' CHECK (status IN ('idle','queued','running','completed','failed','cancelled')),
  config          TEXT NOT NULL DEFAULT '{}',
  input           TEXT,
  metadata        TEXT NOT NULL DEFAULT '{}',
  output          TEXT,
  error           TEXT,
  started_at      TEXT,
  completed_at    TEXT,
  created_at      TEXT NOT NULL,
  updated_at      TEXT NOT NULL
);
CREATE INDEX subagents_gateway_idx ON subagents (gateway_id);
CREATE TABLE subagent_runs (
  _rowid  BIGINT GENERATED ALWAYS AS IDENTITY,
  id            TEXT PRIMARY KEY,
  subagent_id   TEXT NOT NULL REFERENCES subagents(id) ON DELETE CASCADE,
  team_id       TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
  gateway_id    TEXT REFERENCES team_gateways(id) ON DELETE SET NULL,
  run_sequence  BIGINT NOT NULL CHECK (run_sequence >= 1),
  status        TEXT NOT NULL DEFAULT 'running' CHECK (status IN ('pending_admission','waiting_budget','running','cancelling','completed','failed','cancelled')),
  prompt        TEXT,
  output        TEXT,
  error         TEXT,
  metadata      TEXT NOT NULL DEFAULT '{}',
  started_at    TEXT,
  completed_at  TEXT,
  created_at    TEXT NOT NULL,
  updated_at    TEXT NOT NULL,
  CONSTRAINT subagent_runs_sequence_uniq UNIQUE (subagent_id, run_sequence)
);
CREATE UNIQUE INDEX subagent_runs_one_running ON subagent_runs (subagent_id) WHERE status = 'running';
CREATE TABLE subagent_run_events (
  _rowid  BIGINT GENERATED ALWAYS AS IDENTITY,
  id           TEXT PRIMARY KEY,
  run_id       TEXT NOT NULL REFERENCES subagent_runs(id) ON DELETE CASCADE,
  subagent_id  TEXT NOT NULL REFERENCES subagents(id) ON DELETE CASCADE,
  team_id      TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
  gateway_id   TEXT REFERENCES team_gateways(id) ON DELETE SET NULL,
  sequence     BIGINT NOT NULL CHECK (sequence >= 0),
  event_type   TEXT NOT NULL CHECK (event_type IN ('message','system','tool_call','tool_result','run_started','run_progress','cancellation_requested','cancellation_acknowledged','run_completed','run_failed','run_cancelled')),
  payload      TEXT NOT NULL DEFAULT '{}',
  created_at   TEXT NOT NULL,
  CONSTRAINT subagent_run_events_sequence_uniq UNIQUE (run_id, sequence)
);
CREATE TABLE team_resources (
  _rowid  BIGINT GENERATED ALWAYS AS IDENTITY,
  id                TEXT PRIMARY KEY,
  team_id           TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
  resource_type     TEXT NOT NULL,
  resource_id       TEXT NOT NULL DEFAULT '',
  title             TEXT NOT NULL DEFAULT '',
  scope             TEXT NOT NULL DEFAULT 'team' CHECK (scope IN ('team','agent')),
  owner_agent_id    TEXT,
  max_access_level  TEXT NOT NULL DEFAULT 'editor',
  metadata          TEXT,
  created_at        TEXT NOT NULL,
  updated_at        TEXT NOT NULL
);
CREATE INDEX team_resources_team_type_idx ON team_resources (team_id, resource_type);
CREATE TABLE subagent_run_sequence_counters (
  _rowid  BIGINT GENERATED ALWAYS AS IDENTITY,
  subagent_id    TEXT PRIMARY KEY REFERENCES subagents(id) ON DELETE CASCADE,
  last_sequence  BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE auth_users (
  _rowid  BIGINT GENERATED ALWAYS AS IDENTITY,
  id          TEXT PRIMARY KEY,
  gateway_id  TEXT NOT NULL REFERENCES team_gateways(id) ON DELETE CASCADE,
  team_id     TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
  created_at  TEXT NOT NULL
);
CREATE TABLE auth_sessions (
  _rowid  BIGINT GENERATED ALWAYS AS IDENTITY,
  id          TEXT PRIMARY KEY,
  user_id     TEXT NOT NULL REFERENCES auth_users(id) ON DELETE CASCADE,
  created_at  TEXT NOT NULL,
  revoked_at  TEXT
);
CREATE TABLE auth_refresh_tokens (
  _rowid  BIGINT GENERATED ALWAYS AS IDENTITY,
  token_hash  TEXT PRIMARY KEY,
  session_id  TEXT NOT NULL REFERENCES auth_sessions(id) ON DELETE CASCADE,
  parent_hash TEXT,
  created_at  TEXT NOT NULL,
  revoked_at  TEXT
);
CREATE INDEX auth_refresh_tokens_session_idx ON auth_refresh_tokens (session_id);
