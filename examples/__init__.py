"""Services built on svc, the way its README teaches: each one a package a team copies."""
