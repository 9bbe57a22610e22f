DROP TABLE IF EXISTS handler_executions;
DROP TABLE IF EXISTS dead_letters;
