-- Components may be StackStorm action aliases (kind 'alias'). SQLite cannot change a
-- CHECK constraint, so the table is rebuilt: new table, rows copied (ids kept, so
-- AUTOINCREMENT continues where it was), old table dropped, new one renamed, index
-- recreated. No table references components, so foreign keys need no switching off.
CREATE TABLE components_new (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pack_id BIGINT NOT NULL REFERENCES packs (id) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN (
        'action', 'sensor', 'trigger', 'rule', 'workflow', 'policy',
        'runtime', 'permission_set', 'queue', 'alias'
    )),
    ref TEXT NOT NULL,
    label TEXT,
    description TEXT,
    -- The file it was read from, relative to the pack root.
    file TEXT NOT NULL,
    -- The component as read, as JSON.
    definition TEXT NOT NULL,
    UNIQUE (kind, ref)
);
INSERT INTO components_new (id, pack_id, kind, ref, label, description, file, definition)
    SELECT id, pack_id, kind, ref, label, description, file, definition FROM components;
DROP TABLE components;
ALTER TABLE components_new RENAME TO components;
CREATE INDEX components_pack_id ON components (pack_id);
