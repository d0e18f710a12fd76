-- Buckets gain a model; clients of this era may send none (NULL) or an empty one.
ALTER TABLE usage_buckets ADD COLUMN model text;
