/* placeholder until comm/ lands */
