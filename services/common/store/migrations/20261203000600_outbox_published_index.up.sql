-- The relay's purge of published rows (`DELETE ... WHERE state = 'published' AND published_at < ?`)
-- reads only the rows it deletes through this index. Over (state, id) it read every published row
-- in id order when fewer than a batch were old enough: 0.5-2.9 s over 120,000 rows published within
-- the day, with a next-key lock on each row read (REPEATABLE READ), and so on the gap where the
-- gateway inserts pending rows and where the relay marks rows published.
ALTER TABLE outbox ADD KEY IF NOT EXISTS ix_outbox_state_published (state, published_at);
