-- The alias a job was asked for by; its model column is the version that
-- served it.
ALTER TABLE jobs ADD COLUMN alias TEXT;
