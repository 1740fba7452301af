-- Cache fills keep one plan per statement (issue #14). PL/pgSQL caches the plans of
-- `mqgate_fill_pages`, but PostgreSQL's plan cache judged a plan made for each call's own arrays
-- cheaper than the generic one and planned the page-document query afresh on every call: a sixth
-- of a fill's time in a reconnect storm (a fill serves a handful of devices). The generic plans
-- (an index lookup per client id, whatever their number) are the ones a fill wants anyway.
ALTER FUNCTION mqgate_fill_pages(TEXT[]) SET plan_cache_mode = force_generic_plan;
