-- Version 4: the change feed between hub replicas. A transaction that
-- changes rows announces them with NOTIFY panorama_hub_changes (delivered to
-- every listening replica after commit, in commit order). A batch too large
-- for a NOTIFY payload (8000 bytes) is stored here and the NOTIFY carries
-- its id; rows are pruned after ten minutes.
CREATE TABLE hub_changes (
  id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  body        TEXT NOT NULL,
  created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
