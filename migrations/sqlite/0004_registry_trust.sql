-- The trust configured for the registry index a pack was downloaded from
-- (`verified` or `unverified`, registry.indices[].trust); NULL for other sources and
-- for packs registered before it was recorded. `unverified` with checksum_verified
-- false: installed from an index without checksums (the StackStorm Exchange).
ALTER TABLE packs ADD COLUMN registry_trust TEXT;
