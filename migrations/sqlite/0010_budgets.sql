-- Tenant budgets: what is spent and what is reserved by jobs not yet
-- settled, per tenant and period. A job reserves its estimated cost at
-- admission in one conditional update, so concurrent submissions cannot
-- overrun the budget; its result settles the reservation.
CREATE TABLE budgets (
    tenant          TEXT NOT NULL,
    period_start    INTEGER NOT NULL,
    reserved_micros INTEGER NOT NULL DEFAULT 0,
    spent_micros    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, period_start)
);

CREATE TABLE reservations (
    job_id        TEXT PRIMARY KEY NOT NULL,
    tenant        TEXT NOT NULL,
    period_start  INTEGER NOT NULL,
    micros        INTEGER NOT NULL
);
