-- One database per service; no service reads another's tables
-- (ARCHITECTURE.md). Run once, by the postgres image's entrypoint, when the
-- data directory is first initialised; the owner is POSTGRES_USER.
-- The names are the databases of the DATABASE_URLs in rentalbook-database.
CREATE DATABASE rentalbook_book;
CREATE DATABASE rentalbook_reserve;
CREATE DATABASE rentalbook_rental;
CREATE DATABASE rentalbook_view;
CREATE DATABASE rentalbook_notice;
