-- Components may be StackStorm action aliases (kind 'alias').
ALTER TABLE components DROP CONSTRAINT components_kind_check;
ALTER TABLE components ADD CONSTRAINT components_kind_check CHECK (kind IN (
    'action', 'sensor', 'trigger', 'rule', 'workflow', 'policy',
    'runtime', 'permission_set', 'queue', 'alias'
));
