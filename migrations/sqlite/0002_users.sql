-- Users who may log in through the REST gateway (POST /api/v1/auth/login).
CREATE TABLE users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    email TEXT NOT NULL UNIQUE,
    -- argon2id, PHC string format.
    password_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
