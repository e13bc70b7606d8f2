-- Runs once when the production database volume is created (docker-compose.yml).
-- The migrations grant SELECT on the documented views to this role; `lenscat sql` logs in as it.
CREATE ROLE lenscat_reader LOGIN PASSWORD 'lenscat_reader' NOSUPERUSER NOCREATEDB NOCREATEROLE;
