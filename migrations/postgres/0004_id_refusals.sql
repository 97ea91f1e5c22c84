-- A durable submission whose id names another tenant's job: kept under the
-- submitting tenant, so that its client reads the id_taken refusal where it
-- looks for the job, and the other tenant's job is left as it is.
CREATE TABLE id_refusals (
    tenant      TEXT NOT NULL,
    id          TEXT NOT NULL,
    code        TEXT NOT NULL,
    message     TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant, id)
);
