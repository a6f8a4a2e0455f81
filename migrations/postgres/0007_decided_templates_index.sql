-- The send path keeps each app's templates in memory (the catalogue, and
-- every template some user of the app decided on) and reads them again at
-- most once a second, instead of once per send. The templates decided on are
-- listed by a loose index scan (one index probe per distinct template, not
-- one row per user) over this index.
CREATE INDEX subscriptions_by_template ON subscriptions (appid, template_id);
