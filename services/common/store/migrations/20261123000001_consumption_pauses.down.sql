DROP TABLE IF EXISTS consumption_pauses;
